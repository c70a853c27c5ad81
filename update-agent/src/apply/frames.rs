//! The parallel path of `apply`: the builder writes `/usr` as independent zstd frames that
//! each declare their size. They are read and cut apart here as they arrive, decoded on one
//! thread per core, each thread hashing the blocks it decoded while they are in its cache, and
//! handed to the writer in the image's order. A stream that does not start with such a frame
//! (an older release: one frame of unknown size), or a host of one core, where threads would add
//! memory and no speed, has the caller decode it as one stream.

use super::{ApplyError, Incoming, Piece, Pool};
use cairn_release::verity;
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use zstd::zstd_safe;

/// Bytes enough to hold any frame header (`ZSTD_FRAMEHEADERSIZE_MAX`).
pub(super) const HEADER_MAX: usize = 18;

/// The largest frame decoded whole; the builder writes 1 MiB. Bounds the memory a stream from
/// an untrusted mirror can make the agent take before the tree refuses it.
const MAX_FRAME: u64 = 4 << 20;

/// How much more of the download is read before looking for a frame's end again.
const READ_SIZE: u64 = 256 << 10;

/// Threads to decode on: one per core.
pub(super) fn decoders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Whether `head`, the stream's first bytes, starts a frame this path decodes.
pub(super) fn starts_sized_frame(head: &[u8]) -> bool {
    matches!(zstd_safe::get_frame_content_size(head), Ok(Some(n)) if n <= MAX_FRAME)
}

struct Job {
    index: u64,
    frame: Vec<u8>,
    size: usize,
    done: SyncSender<Result<Piece, ApplyError>>,
}

/// Reads `stored` (of which `head` was read already) and cuts it into frames, has them decoded on
/// one thread per core and sends them to the writer in order. The frames may declare `limit`
/// bytes in all. Returns the bytes read, `head` included.
pub(super) fn decode(
    stored: impl Read,
    head: Vec<u8>,
    limit: u64,
    (salt, workers): (&[u8; verity::SALT_SIZE], usize),
    pool: &Pool,
    out: &SyncSender<Incoming>,
) -> Result<u64, ApplyError> {
    // A frame waits for a free decoder rather than in a queue: the frames in memory are those
    // being decoded and those the writer has yet to take.
    let (jobs, queue) = sync_channel::<Job>(0);
    let queue = Mutex::new(queue);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| work(&queue, salt, pool));
        }
        let cut = cut(stored, head, limit, (&jobs, pool), out);
        drop(jobs);
        cut
    })
}

fn work(queue: &Mutex<Receiver<Job>>, salt: &[u8; verity::SALT_SIZE], pool: &Pool) {
    let mut decompressor = zstd::bulk::Decompressor::new();
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return, // Another decoder panicked; the writer reports it.
        };
        let Ok(job) = job else { return };
        let piece = match &mut decompressor {
            Ok(d) => decode_frame(d, &job, salt, pool),
            Err(e) => Err(ApplyError::Decompress(io::Error::new(e.kind(), e.to_string()))),
        };
        let _ = job.done.send(piece); // The writer stopped; its error is reported.
        pool.put(job.frame);
    }
}

fn decode_frame(
    decompressor: &mut zstd::bulk::Decompressor,
    job: &Job,
    salt: &[u8; verity::SALT_SIZE],
    pool: &Pool,
) -> Result<Piece, ApplyError> {
    let mut bytes = pool.empty(job.size);
    // Into exactly the declared size: a frame that holds more fails here.
    let n = decompressor
        .decompress_to_buffer(&job.frame, &mut bytes)
        .map_err(|e| ApplyError::Decompress(io::Error::new(e.kind(), format!("frame {}: {e}", job.index))))?;
    if n != job.size {
        return Err(damaged(format!("frame {} declares {} bytes and holds {n}", job.index, job.size)));
    }
    let leaves = verity::leaf_hashes(salt, &bytes);
    Ok(Piece { bytes, leaves: Some(leaves) })
}

fn damaged(what: String) -> ApplyError {
    ApplyError::Decompress(io::Error::new(io::ErrorKind::InvalidData, what))
}

/// Reads the stream and sends every frame as soon as all of it is here. Returns the bytes read.
fn cut(
    mut stored: impl Read,
    mut buf: Vec<u8>,
    limit: u64,
    (jobs, pool): (&SyncSender<Job>, &Pool),
    out: &SyncSender<Incoming>,
) -> Result<u64, ApplyError> {
    // The most a frame of MAX_FRAME bytes takes compressed, with its header and checksum.
    let longest = zstd_safe::compress_bound(MAX_FRAME as usize) as u64 + 64;
    let (mut index, mut offset, mut declared, mut count) = (0u64, 0u64, 0u64, buf.len() as u64);
    loop {
        // An error here only says that `buf` does not start with a whole frame (yet).
        while let Ok(len) = zstd_safe::find_frame_compressed_size(&buf) {
            let size = match zstd_safe::get_frame_content_size(&buf) {
                Ok(Some(size)) if size <= MAX_FRAME => size,
                _ => {
                    return Err(damaged(format!(
                        "frame {index} (at byte {offset}) does not declare a size of at most {MAX_FRAME} bytes"
                    )));
                }
            };
            declared += size;
            if declared > limit {
                return Err(damaged(format!(
                    "the frames up to frame {index} hold more than the {limit} bytes declared"
                )));
            }
            // Copied into a buffer used again, as decoded frames are: the memory in flight
            // stays that of a few frames, with no fresh allocation per frame.
            let mut frame = pool.empty(len);
            frame.extend_from_slice(&buf[..len]);
            buf.drain(..len);
            let (done, decoding) = sync_channel(1);
            let job = Job { index, frame, size: size as usize, done };
            if jobs.send(job).is_err() || out.send(Incoming::Pending(decoding)).is_err() {
                return Ok(count); // The writer stopped; its error is reported.
            }
            (index, offset) = (index + 1, offset + len as u64);
        }
        if buf.len() as u64 > longest {
            return Err(damaged(format!("no frame ends within {longest} bytes of byte {offset} (frame {index})")));
        }
        let read = (&mut stored).take(READ_SIZE).read_to_end(&mut buf).map_err(ApplyError::Read)?;
        count += read as u64;
        if read == 0 {
            if buf.is_empty() {
                return Ok(count);
            }
            return Err(damaged(format!(
                "the stream ends in frame {index} (at byte {offset}): {} bytes of an incomplete or damaged frame",
                buf.len()
            )));
        }
    }
}
