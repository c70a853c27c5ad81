//! Delta installs: a release's `/usr` image assembled from its chunk index (casync's
//! `.caibx`, a signed target) out of chunks the host already holds and the few it fetches.
//!
//! - Seeds: the running slot's `/usr` image (its dm-verity device, verified as it is read,
//!   then the hash area that follows the data on its partition: one stream, as the image was
//!   cut) and the inactive partition (an older release, or an install that was cut short:
//!   resuming is seeding from what it wrote), cut with the publisher's chunker on a thread
//!   each, so content that did not change has the same chunk ids.
//! - [`plan`] (pure) takes each chunk of the index from a seed that has it, or fetches it. The
//!   inactive partition is overwritten from its start, so a chunk is taken from it only from
//!   its place in the new image on, where nothing has been written yet.
//! - [`Assembly`] reads the image in order: a seeded chunk is read back and checked against
//!   its id (unless it lies on the verity device, which cannot change and checks every read
//!   itself); missing chunks come from [`Fetcher`]'s threads, several requests in flight a
//!   window ahead, each decompressed no further than its size and checked against its id.
//!
//! What it yields goes through `apply::write_usr` as a full download does: written, then
//! checked whole (size, verity root hash, hash area) before anything binds the partition or
//! touches the ESP.

use crate::ports::Transport;
use cairn_chunks::{ChunkId, Digest, chunker, index::Index, store};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Requests in flight, and how many chunks ahead of the one being written they may run (which
/// bounds the memory held: at most this many chunks of at most 256 KiB).
pub const FETCHERS: usize = 4;
const WINDOW: usize = 24;
/// A chunk download that fails for a reason that may pass is tried again this many times.
const RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the chunk index: {0}")]
    Index(String),
    #[error("chunk {id}: {message}")]
    Chunk { id: ChunkId, message: String },
    #[error("a chunk of {0} changed while the image was assembled")]
    SeedChanged(String),
    #[error("the host has too little of the image for chunks to pay ({0:.0}% of it to fetch)")]
    NotWorthIt(f64),
}

/// A window of a device or file: part of a seed.
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    pub path: &'a Path,
    pub offset: u64,
    /// How much of it to read (`u64::MAX`: to its end); never past its end.
    pub len: u64,
    /// Read through dm-verity: what it returns cannot change and was checked as it was read.
    pub verified: bool,
}

/// Where chunks may be reused from: one stream of parts, cut as one.
#[derive(Clone, Debug)]
pub struct Seed<'a> {
    pub name: &'static str,
    pub parts: Vec<Part<'a>>,
    /// The partition being written: its chunks are usable only from their place on.
    pub overwritten: bool,
}

/// A seed's chunks: (id, offset in the seed, length).
pub type SeedChunks = Vec<(ChunkId, u64, u32)>;

/// A seed with its parts open: (file, part, where the part starts in the seed).
pub struct OpenSeed<'a> {
    pub seed: Seed<'a>,
    parts: Vec<(File, Part<'a>, u64)>,
}

impl<'a> OpenSeed<'a> {
    pub fn open(seed: Seed<'a>) -> io::Result<OpenSeed<'a>> {
        let mut parts = Vec::new();
        let mut at = 0;
        for part in &seed.parts {
            let mut file = File::open(part.path)?;
            let end = file.seek(SeekFrom::End(0))?;
            let len = part.len.min(end.saturating_sub(part.offset));
            parts.push((file, Part { len, ..*part }, at));
            at += len;
        }
        Ok(OpenSeed { seed, parts })
    }

    /// The parts holding `len` bytes from `pos` of the seed: (file, offset in it, length, verified).
    fn spans(&self, pos: u64, len: u64) -> impl Iterator<Item = (&File, u64, u64, bool)> + '_ {
        let end = pos + len;
        self.parts.iter().filter_map(move |(file, part, start)| {
            let (from, to) = (pos.max(*start), end.min(start + part.len));
            (from < to).then(|| (file, part.offset + from - start, to - from, part.verified))
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let mut done = 0;
        for (file, offset, len, _) in self.spans(pos, buf.len() as u64) {
            file.read_exact_at(&mut buf[done..done + len as usize], offset)?;
            done += len as usize;
        }
        if done < buf.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    /// Whether every byte of `len` from `pos` is read through dm-verity.
    fn verified(&self, pos: u64, len: u64) -> bool {
        let mut covered = 0;
        for (_, _, n, verified) in self.spans(pos, len) {
            if !verified {
                return false;
            }
            covered += n;
        }
        covered == len
    }

    /// Cuts the seed into chunks as the publisher cut the image, naming them by `digest`.
    pub fn chunks(&self, digest: Digest) -> io::Result<SeedChunks> {
        let reader = BufReader::with_capacity(1 << 20, SeedReader { seed: self, pos: 0 });
        let ends = chunker::chunk(reader, digest, |_| Ok(()))?;
        let starts = std::iter::once(0).chain(ends.iter().map(|(end, _)| *end));
        Ok(starts.zip(&ends).map(|(start, (end, id))| (*id, start, (end - start) as u32)).collect())
    }
}

/// A seed as one stream.
struct SeedReader<'s, 'a> {
    seed: &'s OpenSeed<'a>,
    pos: u64,
}

impl Read for SeedReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((file, offset, len, _)) = self.seed.spans(self.pos, buf.len() as u64).next() else { return Ok(0) };
        let n = file.read_at(&mut buf[..len as usize], offset)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens and cuts `seeds`, each on a thread of its own; a seed that cannot be read is left
/// out, with a line saying why.
pub fn cut<'a>(seeds: Vec<Seed<'a>>, digest: Digest) -> Vec<(OpenSeed<'a>, SeedChunks)> {
    std::thread::scope(|s| {
        let cutting: Vec<_> = seeds
            .into_iter()
            .map(|seed| {
                s.spawn(move || {
                    let name = seed.name;
                    let opened = OpenSeed::open(seed).and_then(|open| open.chunks(digest).map(|c| (open, c)));
                    opened.map_err(|e| format!("not reusing {name}: {e}"))
                })
            })
            .collect();
        cutting
            .into_iter()
            .filter_map(|t| match t.join().unwrap_or_else(|_| Err("a seed's thread panicked".into())) {
                Ok(cut) => Some(cut),
                Err(why) => {
                    eprintln!("cairn-agent: {why}");
                    None
                }
            })
            .collect()
    })
}

/// Where one chunk of the new image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Seed {
        seed: usize,
        offset: u64,
    },
    /// The `job`th chunk to fetch.
    Fetch {
        job: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub id: ChunkId,
    pub len: u32,
    pub source: Source,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The chunks to fetch, each once, in the order they are first needed: (id, length).
    pub fetches: Vec<(ChunkId, u32)>,
}

/// Each chunk of `index` from the first seed that has it usably (seeds in order of
/// preference; an `overwritten` seed's chunk only at or after its place in the image), or
/// fetched.
pub fn plan(index: &Index, seeds: &[(bool, SeedChunks)]) -> Plan {
    let mut by_id: HashMap<ChunkId, Vec<(usize, u64)>> = HashMap::new();
    for (seed, (_, chunks)) in seeds.iter().enumerate() {
        for (id, offset, _) in chunks {
            by_id.entry(*id).or_default().push((seed, *offset));
        }
    }
    let mut out = Plan::default();
    let mut jobs: HashMap<ChunkId, usize> = HashMap::new();
    for (start, end, id) in index.ranges() {
        let len = (end - start) as u32;
        let seeded = by_id.get(&id).into_iter().flatten().find(|(seed, offset)| !seeds[*seed].0 || *offset >= start);
        let source = match seeded {
            Some(&(seed, offset)) => Source::Seed { seed, offset },
            None => Source::Fetch {
                job: *jobs.entry(id).or_insert_with(|| {
                    out.fetches.push((id, len));
                    out.fetches.len() - 1
                }),
            },
        };
        out.steps.push(Step { id, len, source });
    }
    out
}

impl Plan {
    /// The bytes of the image its fetches hold (uncompressed).
    pub fn fetch_bytes(&self) -> u64 {
        self.fetches.iter().map(|(_, len)| u64::from(*len)).sum()
    }

    /// Whether fetching the chunks is expected to cost less than the whole compressed image:
    /// the chunks compress about as well as the image, one by one a little worse, so past 90%
    /// of it the whole image is the cheaper download.
    pub fn worth_it(&self, image: u64) -> Result<(), DeltaError> {
        let share = self.fetch_bytes() as f64 / image.max(1) as f64;
        if share > 0.9 { Err(DeltaError::NotWorthIt(share * 100.0)) } else { Ok(()) }
    }
}

/// Fetches a plan's chunks from the store on a few threads, a window ahead of the assembly.
pub struct Fetcher<'a> {
    transport: &'a dyn Transport,
    store: &'a str,
    digest: Digest,
    jobs: &'a [(ChunkId, u32)],
    wait: &'a (dyn Fn(Duration) + Sync),
    state: Mutex<FetchState>,
    changed: Condvar,
    /// Compressed bytes downloaded.
    pub downloaded: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    /// The next job a fetcher takes.
    next: usize,
    /// The job the assembly waits for (or last took): fetchers stay within `WINDOW` of it.
    wanted: usize,
    ready: HashMap<usize, Result<Arc<Vec<u8>>, DeltaError>>,
    stop: bool,
}

impl<'a> Fetcher<'a> {
    pub fn new(
        transport: &'a dyn Transport,
        (store, digest): (&'a str, Digest),
        jobs: &'a [(ChunkId, u32)],
        wait: &'a (dyn Fn(Duration) + Sync),
    ) -> Fetcher<'a> {
        Fetcher {
            transport,
            store,
            digest,
            jobs,
            wait,
            state: Mutex::default(),
            changed: Condvar::new(),
            downloaded: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One fetcher thread's work: jobs in order, until none is left or `stop`.
    pub fn run(&self) {
        loop {
            let job = {
                let mut s = self.lock();
                loop {
                    if s.stop || s.next >= self.jobs.len() {
                        return;
                    }
                    if s.next < s.wanted + WINDOW {
                        break;
                    }
                    s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                s.next += 1;
                s.next - 1
            };
            let result = self.fetch(job);
            self.lock().ready.insert(job, result);
            self.changed.notify_all();
        }
    }

    /// Ends the fetchers' work (the assembly is done, or failed).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Job `job`'s chunk, once a fetcher has it.
    fn take(&self, job: usize) -> Result<Arc<Vec<u8>>, DeltaError> {
        let mut s = self.lock();
        s.wanted = s.wanted.max(job);
        self.changed.notify_all();
        loop {
            if let Some(result) = s.ready.remove(&job) {
                return result;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn fetch(&self, job: usize) -> Result<Arc<Vec<u8>>, DeltaError> {
        let (id, len) = self.jobs[job];
        let path = format!("{}/{}", self.store.trim_end_matches('/'), store::chunk_path(&id));
        // zstd's worst case for data that does not compress, and a frame's headers.
        let limit = u64::from(len) + u64::from(len) / 128 + 1024;
        let failed = |message: String| DeltaError::Chunk { id, message };
        let mut attempt = 0;
        loop {
            match self.transport.read_all(&path, limit) {
                Ok(compressed) => {
                    self.downloaded.fetch_add(compressed.len() as u64, Ordering::Relaxed);
                    let data =
                        store::decode(&id, self.digest, &compressed, len.into()).map_err(|e| failed(e.to_string()))?;
                    if data.len() != len as usize {
                        return Err(failed(format!("{} bytes where the index says {len}", data.len())));
                    }
                    return Ok(Arc::new(data));
                }
                Err(e) if e.is_transient() && attempt < RETRIES => {
                    attempt += 1;
                    (self.wait)(Duration::from_secs(1 << attempt));
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }
}

/// What an assembly took from where, in bytes of the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// By seed, in the order the seeds were given.
    pub seeded: Vec<u64>,
    pub fetched: u64,
}

/// The new image, read in order from its plan.
pub struct Assembly<'a> {
    plan: &'a Plan,
    seeds: &'a [OpenSeed<'a>],
    digest: Digest,
    fetcher: &'a Fetcher<'a>,
    next: usize,
    /// Fetched chunks needed again later, and how many more times each.
    kept: HashMap<usize, (Arc<Vec<u8>>, u32)>,
    uses: Vec<u32>,
    /// The chunk being read: fetched, or else the first `seeded_len` bytes of `seeded`.
    fetched: Option<Arc<Vec<u8>>>,
    seeded: Vec<u8>,
    seeded_len: usize,
    pos: usize,
    pub reuse: Reuse,
}

impl<'a> Assembly<'a> {
    pub fn new(plan: &'a Plan, seeds: &'a [OpenSeed<'a>], digest: Digest, fetcher: &'a Fetcher<'a>) -> Assembly<'a> {
        let mut uses = vec![0u32; plan.fetches.len()];
        for step in &plan.steps {
            if let Source::Fetch { job } = step.source {
                uses[job] += 1;
            }
        }
        let reuse = Reuse { seeded: vec![0; seeds.len()], fetched: 0 };
        Assembly {
            plan,
            seeds,
            digest,
            fetcher,
            next: 0,
            kept: HashMap::new(),
            uses,
            fetched: None,
            seeded: Vec::new(),
            seeded_len: 0,
            pos: 0,
            reuse,
        }
    }

    fn current(&self) -> &[u8] {
        match &self.fetched {
            Some(chunk) => chunk,
            None => &self.seeded[..self.seeded_len],
        }
    }

    /// Makes the next chunk current; false at the end of the image.
    fn next_chunk(&mut self) -> Result<bool, DeltaError> {
        let Some(step) = self.plan.steps.get(self.next).copied() else { return Ok(false) };
        self.next += 1;
        self.pos = 0;
        match step.source {
            Source::Seed { seed, offset } => {
                let open = &self.seeds[seed];
                let len = step.len as usize;
                self.fetched = None;
                self.seeded.resize(self.seeded.len().max(len), 0);
                self.seeded_len = len;
                let data = &mut self.seeded[..len];
                open.read_exact_at(data, offset).map_err(|e| DeltaError::Chunk {
                    id: step.id,
                    message: format!("reading {}: {e}", open.seed.name),
                })?;
                if !open.verified(offset, len as u64) && self.digest.of(data) != step.id {
                    return Err(DeltaError::SeedChanged(open.seed.name.to_string()));
                }
                self.reuse.seeded[seed] += u64::from(step.len);
            }
            Source::Fetch { job } => {
                let data = match self.kept.remove(&job) {
                    Some((data, _)) => data,
                    None => self.fetcher.take(job)?,
                };
                self.uses[job] -= 1;
                if self.uses[job] > 0 {
                    self.kept.insert(job, (data.clone(), self.uses[job]));
                }
                self.reuse.fetched += u64::from(step.len);
                self.fetched = Some(data);
            }
        }
        Ok(true)
    }
}

impl Read for Assembly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current().len() {
            if !self.next_chunk().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let current = self.current();
        let n = buf.len().min(current.len() - self.pos);
        buf[..n].copy_from_slice(&current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The index of `data`, checked against the size of the image it must describe.
pub fn parse_index(data: &[u8], image_size: u64) -> Result<Index, DeltaError> {
    let index = Index::parse(data).map_err(|e| DeltaError::Index(e.to_string()))?;
    if index.size() != image_size {
        return Err(DeltaError::Index(format!("it describes {} bytes, the image is {image_size}", index.size())));
    }
    if let Some((start, end, _)) = index.ranges().find(|(s, e, _)| e - s > u64::from(chunker::MAX)) {
        return Err(DeltaError::Index(format!("a chunk of {} bytes at {start}", end - start)));
    }
    Ok(index)
}

#[cfg(test)]
mod tests;
