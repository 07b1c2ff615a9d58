//! Runs the fuzz target's body over the committed corpus (`fuzz/corpus/chain`), so every seed
//! and every crash the fuzzer ever found stays a regression test.

#[test]
fn chain_fuzz_corpus_replays_without_violations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/chain");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus directory") {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        vhost::fuzzing::chain_and_request(&data);
        n += 1;
    }
    assert!(n >= 13, "corpus has only {n} inputs");
}

#[test]
fn fuzz_body_survives_random_inputs() {
    // A cheap deterministic stand-in for the fuzzer: mutated seeds and random images.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/chain");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut d = seeds[i % seeds.len()].clone();
        for _ in 0..(rnd() % 8) {
            let at = (rnd() as usize) % d.len();
            d[at] = rnd() as u8;
        }
        vhost::fuzzing::chain_and_request(&d);
    }
}
