//! Times each part of the apply pipeline alone on the bench-apply image (run cairn-bench-apply
//! first): where the time goes. A debugging aid, not a benchmark of record.
use cairn_agent::ports::Transport;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let out = cairn_tests::images_dir().join("bench-apply");
    let zst = std::fs::read(out.join("release/usr.img.zst"))?;
    let plain = std::fs::read(out.join("usr.img"))?;
    let mb = plain.len() as f64 / 1e6;
    let rate = |name: &str, t: Duration| println!("{name:<28} {:>8.0} MB/s of /usr", mb / t.as_secs_f64());
    let server = cairn_tests::http::FileServer::start(&out.join("release"))?;
    let http = cairn_agent::http::HttpTransport::insecure(&server.url(), Duration::from_secs(30))?;
    let t = Instant::now();
    std::io::copy(&mut http.open("usr.img.zst", 0)?, &mut std::io::sink())?;
    rate("http download (compressed)", t.elapsed());
    let t = Instant::now();
    std::io::copy(&mut zstd::stream::Decoder::new(&zst[..])?, &mut std::io::sink())?;
    rate("zstd decode", t.elapsed());
    let t = Instant::now();
    let _ = Sha256::digest(&zst);
    let _ = Sha256::digest(&plain);
    rate("sha256 (stored + plain)", t.elapsed());
    let blocks = (plain.len() / 4096) as u64 - 1000;
    let t = Instant::now();
    let _ = cairn_release::verity::build(&plain[..], blocks, [0; 32])?;
    rate("verity tree (data blocks)", t.elapsed());
    let path = std::path::Path::new("/var/tmp/cairn-apply-parts.img");
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for c in plain.chunks(1 << 20) {
        std::io::Write::write_all(&mut f, c)?;
    }
    f.sync_all()?;
    rate("write + fsync", t.elapsed());
    let t = Instant::now();
    let mut buf = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    rate("re-read (page cache)", t.elapsed());
    std::fs::remove_file(path)?;
    Ok(())
}
