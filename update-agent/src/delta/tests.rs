use super::*;
use crate::source::DirTransport;
use cairn_tuf::releases::incompressible;

const MIB: usize = 1 << 20;

/// `image`'s index, with its chunks put into a store at `feed/chunks`.
fn publish(feed: &Path, image: &[u8]) -> Index {
    store::store_image(image, &store::Store::new(&feed.join("chunks"))).unwrap()
}

/// A seed of one whole file, read raw.
fn seed<'a>(name: &'static str, path: &'a Path, overwritten: bool) -> Seed<'a> {
    Seed { name, parts: vec![Part { path, offset: 0, len: u64::MAX, verified: false }], overwritten }
}

fn seed_chunks(seed: &Seed) -> io::Result<SeedChunks> {
    OpenSeed::open(seed.clone())?.chunks(Digest::NEW)
}

/// Assembles `index` from `seeds` and the store in `feed`: the image, what came from where,
/// and the bytes downloaded.
fn assemble(feed: &Path, index: &Index, seeds: &[Seed]) -> Result<(Vec<u8>, Reuse, u64), DeltaError> {
    let (open, chunks): (Vec<OpenSeed>, Vec<SeedChunks>) = cut(seeds.to_vec(), index.digest).into_iter().unzip();
    assert_eq!(open.len(), seeds.len(), "every seed could be read");
    let cut: Vec<(bool, SeedChunks)> = open.iter().map(|s| s.seed.overwritten).zip(chunks).collect();
    let plan = plan(index, &cut);
    let transport = DirTransport(feed.to_path_buf());
    let fetcher = Fetcher::new(&transport, ("chunks", index.digest), &plan.fetches, &|_| {});
    std::thread::scope(|s| {
        for _ in 0..FETCHERS {
            s.spawn(|| fetcher.run());
        }
        let result = (|| {
            let mut assembly = Assembly::new(&plan, &open, index.digest, &fetcher);
            let mut out = Vec::new();
            assembly.read_to_end(&mut out).map_err(|e| match e.into_inner().map(|e| e.downcast::<DeltaError>()) {
                Some(Ok(e)) => *e,
                other => panic!("not a delta error: {other:?}"),
            })?;
            Ok((out, assembly.reuse))
        })();
        fetcher.stop();
        result.map(|(out, reuse)| (out, reuse, fetcher.downloaded.load(Ordering::Relaxed)))
    })
}

/// Version 1 and a version 2 that differs in a few places: 64 KiB rewritten, 3 bytes inserted.
fn two_versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = incompressible(8 * MIB, 7);
    let mut v2 = v1.clone();
    v2[3 * MIB..3 * MIB + 65536].copy_from_slice(&incompressible(65536, 9));
    v2.splice(6 * MIB..6 * MIB, *b"new");
    (v1, v2)
}

#[test]
fn an_image_is_assembled_from_what_the_host_has_and_the_few_chunks_it_fetches() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions();
    let index = publish(&t.path().join("feed"), &v2);
    let running = t.path().join("running");
    std::fs::write(&running, &v1).unwrap();

    let (image, reuse, downloaded) =
        assemble(&t.path().join("feed"), &index, &[seed("running", &running, false)]).unwrap();
    assert!(image == v2, "the assembled image differs from version 2");
    assert_eq!(reuse.seeded[0] + reuse.fetched, v2.len() as u64);
    // Two changed places, a few chunks around each.
    assert!(reuse.fetched < 8 * (256 << 10), "fetched {} of {} bytes", reuse.fetched, v2.len());
    assert!(downloaded > 0 && downloaded < v2.len() as u64 / 10, "downloaded {downloaded}");

    // Nothing to seed from: every chunk is fetched, each once; the whole image is the cheaper
    // download then.
    let (image, reuse, _) = assemble(&t.path().join("feed"), &index, &[]).unwrap();
    assert!(image == v2);
    assert_eq!(reuse.fetched, v2.len() as u64);
    assert!(matches!(plan(&index, &[]).worth_it(v2.len() as u64), Err(DeltaError::NotWorthIt(p)) if p > 99.0));
    let cut = vec![(false, seed_chunks(&seed("running", &running, false)).unwrap())];
    plan(&index, &cut).worth_it(v2.len() as u64).unwrap();
}

#[test]
fn the_partition_being_written_lends_chunks_only_where_nothing_was_written_yet() {
    let t = tempfile::tempdir().unwrap();
    let (v1, _) = two_versions();
    // Version 2 is version 1 shifted 1 MiB later: each chunk of v1 sits before its new place.
    let v2: Vec<u8> = incompressible(MIB, 11).into_iter().chain(v1.iter().copied()).collect();
    let index = publish(&t.path().join("feed"), &v2);
    let inactive = t.path().join("inactive");
    std::fs::write(&inactive, &v1).unwrap();
    let cut = vec![(true, seed_chunks(&seed("inactive", &inactive, true)).unwrap())];
    let p = plan(&index, &cut);
    let seeded = p.steps.iter().filter(|s| matches!(s.source, Source::Seed { .. })).count();
    assert_eq!(seeded, 0, "a chunk behind the writer was planned from the partition being overwritten");

    // Version 2 is version 1 cut 1 MiB shorter at its start: its chunks lie ahead of their places.
    let v2 = v1[MIB..].to_vec();
    let index = publish(&t.path().join("feed2"), &v2);
    let p = plan(&index, &cut);
    let seeded = p.steps.iter().filter(|s| matches!(s.source, Source::Seed { .. })).count();
    assert!(seeded + 4 > p.steps.len(), "{seeded} of {} chunks seeded", p.steps.len());
    let (image, _, _) = assemble(&t.path().join("feed2"), &index, &[seed("inactive", &inactive, true)]).unwrap();
    assert!(image == v2);
}

#[test]
fn the_running_slot_is_preferred_and_repeated_chunks_are_fetched_once() {
    let t = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 4 * MIB];
    let index = publish(&t.path().join("feed"), &zeros);
    let p = plan(&index, &[]);
    assert!(p.steps.len() > 8);
    assert_eq!(p.fetches.len(), 1, "the same chunk, fetched once");
    let (image, reuse, downloaded) = assemble(&t.path().join("feed"), &index, &[]).unwrap();
    assert!(image == zeros && reuse.fetched == zeros.len() as u64);
    assert!(downloaded < 4096, "downloaded {downloaded}");

    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::write(&a, &zeros).unwrap();
    std::fs::write(&b, &zeros).unwrap();
    let cut = vec![
        (false, seed_chunks(&seed("running", &a, false)).unwrap()),
        (true, seed_chunks(&seed("inactive", &b, true)).unwrap()),
    ];
    let p = plan(&index, &cut);
    assert!(p.steps.iter().all(|s| matches!(s.source, Source::Seed { seed: 0, .. })));
}

#[test]
fn a_chunk_that_is_not_what_its_id_says_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions();
    let feed = t.path().join("feed");
    let index = publish(&feed, &v2);
    let running = t.path().join("running");
    std::fs::write(&running, &v1).unwrap();
    let cut = vec![(false, seed_chunks(&seed("running", &running, false)).unwrap())];
    let (id, _) = plan(&index, &cut).fetches[0];
    std::fs::write(feed.join("chunks").join(store::chunk_path(&id)), zstd::bulk::compress(b"evil", 3).unwrap())
        .unwrap();
    let e = assemble(&feed, &index, &[seed("running", &running, false)]).unwrap_err();
    assert!(matches!(&e, DeltaError::Chunk { id: bad, .. } if *bad == id), "{e}");
    assert!(e.to_string().contains("hashes to"), "{e}");

    // Missing from the store: refused, naming the chunk.
    std::fs::remove_file(feed.join("chunks").join(store::chunk_path(&id))).unwrap();
    let e = assemble(&feed, &index, &[seed("running", &running, false)]).unwrap_err();
    assert!(matches!(&e, DeltaError::Chunk { id: bad, .. } if *bad == id), "{e}");
}

#[test]
fn a_seed_in_two_parts_is_cut_as_one_stream_and_a_raw_part_that_changed_is_refused() {
    // The running image as the host has it: its data on one device, its tail (the hash area)
    // on another, here the tail of a longer file.
    let t = tempfile::tempdir().unwrap();
    let image = incompressible(5 * MIB + 12345, 21);
    let index = publish(&t.path().join("feed"), &image);
    let (data, partition) = (t.path().join("data"), t.path().join("partition"));
    std::fs::write(&data, &image[..4 * MIB]).unwrap();
    let mut raw = vec![7u8; 4 * MIB];
    raw.extend_from_slice(&image[4 * MIB..]);
    raw.extend_from_slice(&incompressible(MIB, 22)); // whatever follows the image
    std::fs::write(&partition, &raw).unwrap();
    let running = Seed {
        name: "running",
        parts: vec![
            Part { path: &data, offset: 0, len: u64::MAX, verified: true },
            Part { path: &partition, offset: 4 * MIB as u64, len: (MIB + 12345) as u64, verified: false },
        ],
        overwritten: false,
    };
    let (rebuilt, reuse, downloaded) =
        assemble(&t.path().join("feed"), &index, std::slice::from_ref(&running)).unwrap();
    assert!(rebuilt == image);
    assert_eq!((reuse.fetched, downloaded), (0, 0), "every chunk, the one across the parts too, is the host's");

    // The raw part changed after it was cut: its chunks no longer hash to their ids.
    let open = OpenSeed::open(running.clone()).unwrap();
    let cut = vec![(false, open.chunks(Digest::NEW).unwrap())];
    let p = plan(&index, &cut);
    raw[5 * MIB] ^= 1;
    std::fs::write(&partition, &raw).unwrap();
    let transport = DirTransport(t.path().join("feed"));
    let fetcher = Fetcher::new(&transport, ("chunks", index.digest), &p.fetches, &|_| {});
    let seeds = [open];
    let mut assembly = Assembly::new(&p, &seeds, index.digest, &fetcher);
    let e = io::copy(&mut assembly, &mut io::sink()).unwrap_err();
    assert!(e.to_string().contains("a chunk of running changed"), "{e}");
}

#[test]
fn an_index_must_describe_the_signed_image() {
    let index = publish(tempfile::tempdir().unwrap().path(), &incompressible(MIB, 3));
    let bytes = index.to_bytes();
    assert_eq!(parse_index(&bytes, MIB as u64).unwrap(), index);
    let e = parse_index(&bytes, MIB as u64 + 1).unwrap_err().to_string();
    assert!(e.contains("describes 1048576 bytes"), "{e}");
    assert!(parse_index(&bytes[..bytes.len() - 1], MIB as u64).is_err());
}
