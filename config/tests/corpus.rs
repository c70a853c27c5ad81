//! Every document in tests/corpus/ against its `.expect` file: the diagnostics exactly as
//! `cairn config validate` prints them (line:column: severity: path: message), then, for a
//! document that is used, what it configures (JSON). `CAIRN_BLESS=1` rewrites the `.expect`
//! files from the current output, for review in the diff.

use cairn_config::{Parsed, parse};
use std::path::Path;

fn render(data: &[u8]) -> String {
    match parse(data) {
        Parsed::Empty => "empty\n".to_string(),
        Parsed::Invalid(diagnostics) => {
            let mut out = String::from("refused\n");
            for d in diagnostics {
                out.push_str(&format!("{d}\n"));
            }
            out
        }
        Parsed::Config(config, diagnostics) => {
            let mut out = String::from("used\n");
            for d in diagnostics {
                out.push_str(&format!("{d}\n"));
            }
            out.push_str(&serde_json::to_string_pretty(&config).unwrap());
            out.push('\n');
            out
        }
    }
}

#[test]
fn corpus() {
    // At run time: a test binary built in another clone sharing the target is reused as is.
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/corpus");
    let bless = std::env::var_os("CAIRN_BLESS").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "the corpus is missing: {}", dir.display());
    let mut failures = Vec::new();
    for doc in &names {
        let got = render(&std::fs::read(doc).unwrap());
        let expect_path = doc.with_extension("expect");
        if bless {
            std::fs::write(&expect_path, &got).unwrap();
            continue;
        }
        let want =
            std::fs::read_to_string(&expect_path).unwrap_or_else(|_| panic!("{} has no .expect file", doc.display()));
        if got != want {
            failures.push(format!("== {}\n-- want\n{want}-- got\n{got}", doc.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
