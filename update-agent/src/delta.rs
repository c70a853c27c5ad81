//! Delta installs: a release's `/usr` image assembled from its chunk index (casync's
//! `.caibx`, a signed target) out of chunks the host already holds and the few it fetches.
//!
//! - Seeds: the running slot's `/usr` (its dm-verity device, so what is reused was verified as
//!   it was read) and the inactive partition (an older release, or an install that was cut
//!   short: resuming is seeding from what it wrote), cut with the publisher's chunker, so
//!   content that did not change has the same chunk ids.
//! - [`plan`] (pure) takes each chunk of the index from a seed that has it, or fetches it. The
//!   inactive partition is overwritten from its start, so a chunk is taken from it only from
//!   its place in the new image on, where nothing has been written yet.
//! - [`Assembly`] reads the image in order: a seeded chunk is read back and checked against
//!   its id; missing chunks come from [`Fetcher`]'s threads, several requests in flight a
//!   window ahead, each decompressed no further than its size and checked against its id.
//!
//! What it yields goes through `apply::write_usr` as a full download does: written, then
//! checked whole (size, sha256, verity root hash) before anything binds the partition or
//! touches the ESP.

use crate::ports::Transport;
use cairn_chunks::{ChunkId, chunker, index::Index, store};
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

/// A device, or a window of one, whose chunks may be reused.
#[derive(Clone, Copy, Debug)]
pub struct SeedDevice<'a> {
    pub name: &'static str,
    pub path: &'a Path,
    pub offset: u64,
    /// How much of it to read (`u64::MAX`: to its end).
    pub len: u64,
    /// The partition being written: its chunks are usable only from their place on.
    pub overwritten: bool,
}

/// A seed's chunks: (id, offset in the seed, length).
pub type SeedChunks = Vec<(ChunkId, u64, u32)>;

/// Cuts `seed` into chunks as the publisher cut the image.
pub fn seed_chunks(seed: &SeedDevice) -> io::Result<SeedChunks> {
    let mut file = File::open(seed.path)?;
    file.seek(SeekFrom::Start(seed.offset))?;
    let reader = BufReader::with_capacity(1 << 20, file.take(seed.len));
    let ends = chunker::chunk(reader, |_| Ok(()))?;
    let starts = std::iter::once(0).chain(ends.iter().map(|(end, _)| *end));
    Ok(starts.zip(&ends).map(|(start, (end, id))| (*id, start, (end - start) as u32)).collect())
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
        store: &'a str,
        jobs: &'a [(ChunkId, u32)],
        wait: &'a (dyn Fn(Duration) + Sync),
    ) -> Fetcher<'a> {
        Fetcher {
            transport,
            store,
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
                    let data = store::decode(&id, &compressed, len.into()).map_err(|e| failed(e.to_string()))?;
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
    seeds: Vec<(SeedDevice<'a>, File)>,
    fetcher: &'a Fetcher<'a>,
    next: usize,
    /// Fetched chunks needed again later, and how many more times each.
    kept: HashMap<usize, (Arc<Vec<u8>>, u32)>,
    uses: Vec<u32>,
    current: Arc<Vec<u8>>,
    pos: usize,
    pub reuse: Reuse,
}

impl<'a> Assembly<'a> {
    pub fn new(plan: &'a Plan, seeds: &[SeedDevice<'a>], fetcher: &'a Fetcher<'a>) -> io::Result<Assembly<'a>> {
        let mut uses = vec![0u32; plan.fetches.len()];
        for step in &plan.steps {
            if let Source::Fetch { job } = step.source {
                uses[job] += 1;
            }
        }
        let seeds = seeds.iter().map(|s| Ok((*s, File::open(s.path)?))).collect::<io::Result<Vec<_>>>()?;
        let reuse = Reuse { seeded: vec![0; seeds.len()], fetched: 0 };
        Ok(Assembly {
            plan,
            seeds,
            fetcher,
            next: 0,
            kept: HashMap::new(),
            uses,
            current: Arc::default(),
            pos: 0,
            reuse,
        })
    }

    fn next_chunk(&mut self) -> Result<Option<Arc<Vec<u8>>>, DeltaError> {
        let Some(step) = self.plan.steps.get(self.next).copied() else { return Ok(None) };
        self.next += 1;
        match step.source {
            Source::Seed { seed, offset } => {
                let (dev, file) = &self.seeds[seed];
                let mut data = vec![0u8; step.len as usize];
                file.read_exact_at(&mut data, dev.offset + offset)
                    .map_err(|e| DeltaError::Chunk { id: step.id, message: format!("reading {}: {e}", dev.name) })?;
                if ChunkId::of(&data) != step.id {
                    return Err(DeltaError::SeedChanged(dev.name.to_string()));
                }
                self.reuse.seeded[seed] += u64::from(step.len);
                Ok(Some(Arc::new(data)))
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
                Ok(Some(data))
            }
        }
    }
}

impl Read for Assembly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.next_chunk().map_err(io::Error::other)? {
                Some(chunk) => (self.current, self.pos) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
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
