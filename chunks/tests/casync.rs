//! Cairn's index and store read by a second implementation: Debian's `casync extract`
//! reproduces the exact blob from the `.caibx` and the `.castr` Cairn wrote; and an image
//! changed in one place shares all but a few chunks with the original.

use cairn_chunks::Digest;
use cairn_chunks::chunker::{self, AVG, MAX, MIN};
use cairn_chunks::index::Index;
use cairn_chunks::store::Store;
use std::path::Path;
use std::process::Command;

/// `len` bytes that do not compress away (xorshift), the same every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Chunks `blob` into `store` with `digest`; returns the index and how many chunks were new.
fn publish(blob: &[u8], store: &Store, digest: Digest) -> (Index, usize) {
    let mut new = 0;
    let chunks = chunker::chunk(blob, digest, |c| {
        new += usize::from(store.put(&c.id, &c.data).map_err(std::io::Error::other)?);
        Ok(())
    })
    .unwrap();
    let index =
        Index { digest, chunk_size_min: MIN.into(), chunk_size_avg: AVG.into(), chunk_size_max: MAX.into(), chunks };
    (index, new)
}

fn casync_extract(dir: &Path, index: &Index, store: &Path) -> Vec<u8> {
    let caibx = dir.join("image.caibx");
    std::fs::write(&caibx, index.to_bytes()).unwrap();
    let out = dir.join("extracted.raw");
    let result = Command::new("casync")
        .arg("extract")
        .arg(format!("--store={}", store.display()))
        .arg(&caibx)
        .arg(&out)
        .output()
        .expect("casync (./scripts/setup.sh installs it)");
    assert!(result.status.success(), "casync extract: {}", String::from_utf8_lossy(&result.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn casync_extracts_what_cairn_chunked_and_a_small_change_shares_most_chunks() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::new(&t.path().join("default.castr"));
    // 8 MiB with a repeated stretch, as images repeat themselves.
    let mut v1 = noise(6 << 20, 7);
    v1.extend_from_within(1 << 20..3 << 20);
    let (index1, new1) = publish(&v1, &store, Digest::NEW);
    assert_eq!(index1.size(), v1.len() as u64);
    assert!(new1 < index1.chunks.len(), "the repeated stretch is stored once ({new1} of {})", index1.chunks.len());
    assert_eq!(Index::parse(&index1.to_bytes()).unwrap(), index1);
    assert!(casync_extract(t.path(), &index1, &store.dir) == v1, "casync extracted other bytes");

    // One changed byte and 100 inserted ones in the middle: only the chunks around them are new.
    let mut v2 = v1.clone();
    v2[5 << 20] ^= 0xff;
    v2.splice(4 << 20..4 << 20, noise(100, 9));
    let (index2, new2) = publish(&v2, &store, Digest::NEW);
    println!("chunks: {} in v1, {} in v2, {new2} new", index1.chunks.len(), index2.chunks.len());
    assert!(new2 <= 4, "{new2} new chunks for two small changes");
    assert!(casync_extract(t.path(), &index2, &store.dir) == v2);

    // casync's own default digest, which older Cairn indexes name their chunks by, alike.
    let (index3, _) = publish(&v2, &store, Digest::Sha512_256);
    assert_ne!(index3.chunks[0].1, index2.chunks[0].1);
    assert!(casync_extract(t.path(), &index3, &store.dir) == v2);
}
