//! Times `write_usr` on the bench-apply image into a sink (CPU only) and into a file, with the
//! image as the builder writes it (frames) and as one zstd stream. A debugging aid.
use cairn_release::manifest::{ArtifactKind, Release};
use std::io::{Seek, SeekFrom, Write};
use std::time::Instant;

struct Sink(u64);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Seek for Sink {
    fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
        Ok(0)
    }
}

fn main() -> anyhow::Result<()> {
    let out = cairn_tests::images_dir().join("bench-apply");
    let release: Release = serde_json::from_slice(&std::fs::read(out.join("release/release.json"))?)?;
    let usr = release.artifact(ArtifactKind::Usr).clone();
    // A release directory to take the framed image from (default: the bench's own).
    let dir = std::env::args().nth(1).map_or(out.join("release"), std::path::PathBuf::from);
    let framed = std::fs::read(dir.join("usr.img.zst"))?;
    let stream = zstd::encode_all(&std::fs::read(out.join("usr.img"))?[..], 3)?;
    let dd = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", out.join("usr.img").display()))
            .args(["of=/var/tmp/cairn-apply-pipeline.img", "bs=1M", "conv=fsync", "status=none"])
            .status()?;
        anyhow::ensure!(st.success());
        std::fs::remove_file("/var/tmp/cairn-apply-pipeline.img")?;
        Ok(t.elapsed().as_secs_f64())
    };
    for (name, stored) in [("frames", &framed), ("one stream", &stream)].repeat(3) {
        println!("dd: {:.3} s", dd()?);
        let a = cairn_release::manifest::Artifact { size: stored.len() as u64, ..usr.clone() };
        for target in ["sink", "file", "eager"] {
            let t = Instant::now();
            if target == "eager" {
                let path = "/var/tmp/cairn-apply-pipeline.img";
                std::fs::File::create(path)?;
                let mut f = cairn_agent::partition::Partition::open(std::path::Path::new(path), 0, 1 << 30)?;
                cairn_agent::apply::write_usr(&stored[..], &a, &mut f, 1 << 30)?;
                std::fs::remove_file(path)?;
            } else if target == "sink" {
                cairn_agent::apply::write_usr(&stored[..], &a, &mut Sink(0), 1 << 30)?;
            } else {
                let path = "/var/tmp/cairn-apply-pipeline.img";
                let mut f = std::fs::File::create(path)?;
                cairn_agent::apply::write_usr(&stored[..], &a, &mut f, 1 << 30)?;
                f.sync_all()?;
                std::fs::remove_file(path)?;
            }
            let d = t.elapsed();
            println!(
                "{name:<12} into {target}: {:.0} MB/s ({:.3} s)",
                a.uncompressed_size as f64 / 1e6 / d.as_secs_f64(),
                d.as_secs_f64()
            );
        }
    }
    Ok(())
}
