//! Documents written to hurt the host that reads them: each is refused whole, with an error at
//! a line and column inside the document, and the parser survives it (a stack overflow would
//! abort the test binary).

use cairn_config::diag::{Diagnostic, Severity};
use cairn_config::{Parsed, parse};
use std::io::Write;

fn refused(data: &[u8]) -> Vec<Diagnostic> {
    match parse(data) {
        Parsed::Invalid(d) => d.into_iter().filter(|d| d.severity == Severity::Error).collect(),
        other => panic!("not refused: {:?}", other.into_diagnostics()),
    }
}

/// The one error, which must sit inside `text`.
fn one_error(text: &str) -> Diagnostic {
    let errors = refused(text.as_bytes());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors.into_iter().next().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(e.line >= 1 && e.line <= lines.len(), "line {} of {}: {e}", e.line, lines.len());
    assert!(e.column >= 1 && e.column <= lines[e.line - 1].chars().count() + 1, "{e}");
    e
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn fifty_thousand_nested_lists_are_refused_at_the_first_too_deep() {
    let text = format!("#cloud-config\nusers:\n{}x\n", "- ".repeat(50_000));
    assert!(text.len() > 100_000);
    let e = one_error(&text);
    assert!(e.to_string().contains("nested more than 64 deep"), "{e}");
    // The document is level 1; the 64th list, the 65th level, starts at column 127.
    assert_eq!((e.line, e.column), (3, 127), "{e}");
}

#[test]
fn deep_indentation_is_refused_too() {
    let mut text = String::from("#cloud-config\ncairn:\n");
    for depth in 1..3_000 {
        text.push_str(&format!("{}k:\n", " ".repeat(depth)));
    }
    text.push_str(&format!("{}k: x\n", " ".repeat(3_000)));
    let e = one_error(&text);
    assert!(e.to_string().contains("nested more than 64 deep"), "{e}");
}

#[test]
fn flow_lists_inside_block_lists_count_together() {
    let text = format!("#cloud-config\nusers:\n{}{}{}\n", "- ".repeat(40), "[".repeat(40), "]".repeat(40));
    let e = one_error(&text);
    assert!(e.to_string().contains("nested more than 64 deep"), "{e}");
    // Just inside the limit is parsed as usual (and refused for what it means, not its depth).
    let text = format!("#cloud-config\nusers:\n{}x\n", "- ".repeat(62));
    assert!(!one_error(&text).to_string().contains("nested"));
}

#[test]
fn an_oversized_document_is_refused() {
    let text = format!("#cloud-config\nhostname: a\n#{}\n", "x".repeat(16 << 20));
    let e = one_error(&text);
    assert!(e.to_string().contains("over 16 MiB"), "{e}");
}

#[test]
fn a_gzip_bomb_as_the_whole_document_is_refused() {
    let mut text = b"#cloud-config\nhostname: a\n#".to_vec();
    text.resize(200 << 20, b'x');
    let bomb = gzip(&text);
    assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
    let errors = refused(&bomb);
    assert!(errors[0].to_string().contains("over 16 MiB once decompressed"), "{}", errors[0]);
}

#[test]
fn many_gzip_bombs_in_write_files_exhaust_the_documents_budget() {
    // Each 16 MiB once decompressed, about 16 KiB as written: the fifth goes over 64 MiB.
    let bomb = cairn_release_base64(&gzip(&vec![0u8; 16 << 20]));
    let mut text = String::from("#cloud-config\nwrite_files:\n");
    for i in 0..200 {
        text.push_str(&format!("  - path: /var/bomb{i}\n    encoding: gz+b64\n    content: {bomb}\n"));
    }
    let errors = refused(text.as_bytes());
    assert!(!errors.is_empty());
    let first = &errors[0];
    assert!(first.to_string().contains("decode to more than 64 MiB in all"), "{first}");
    assert_eq!(first.path, "write_files[4].content", "{first}");
    assert_eq!(first.line, 2 + 4 * 3 + 3, "{first}");
}

fn cairn_release_base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn passwd_and_shadow_injection_is_refused_field_by_field() {
    let text = "#cloud-config
users:
  - name: a
    homedir: \"/home/a:0:0::/root:/bin/sh\"
  - name: b
    shell: \"/bin/sh\\nroot2::0:0::/root:/bin/sh\"
  - name: c
    passwd: \"$6$salt$hash:0:0::\"
  - name: d
    passwd: \"!$6$salt$hash\\nroot::0\"
  - name: e
    gecos: \"x\\ry\"
  - name: f
    homedir: /home/../etc
";
    let errors = refused(text.as_bytes());
    let at: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        at,
        [
            (4, "users[0].homedir"),
            (6, "users[1].shell"),
            (8, "users[2].passwd"),
            (10, "users[3].passwd"),
            (12, "users[4].gecos"),
            (14, "users[5].homedir")
        ],
        "{errors:?}"
    );
    // What a real hash looks like still passes.
    let good = "#cloud-config\nusers:\n  - {name: a, passwd: \"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7\"}\n";
    assert!(matches!(parse(good.as_bytes()), Parsed::Config(..)));
}

#[test]
fn a_syntax_error_at_the_very_end_is_reported_on_the_last_line() {
    let text = "#cloud-config\nhostname: a\nusers: [\n";
    let e = one_error(text);
    assert_eq!((e.line, e.column), (3, 9), "{e}");
}

#[test]
fn a_container_by_plain_http_needs_a_digest() {
    let text = "#cloud-config\ncairn:\n  containers:\n    - {name: web, image: \"http://10.0.2.2/web.tar\"}\n";
    let e = one_error(text);
    assert!(e.to_string().contains("needs the archive's sha256"), "{e}");
    assert_eq!(e.line, 4);
    let with_digest = format!(
        "#cloud-config\ncairn:\n  containers:\n    - {{name: web, image: \"http://10.0.2.2/web.tar\", sha256: {}}}\n",
        "ab".repeat(32)
    );
    assert!(matches!(parse(with_digest.as_bytes()), Parsed::Config(..)));
    let https = "#cloud-config\ncairn:\n  containers:\n    - {name: web, image: \"https://example.com/web.tar\"}\n";
    assert!(matches!(parse(https.as_bytes()), Parsed::Config(..)));
}
