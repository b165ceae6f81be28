//! The clippy.toml shipped for services is the one the fixtures use, so
//! CI's clippy run proves it parses and that deja's own macros pass it.

#[test]
fn fixtures_use_the_shipped_service_clippy_toml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("runtime/service-clippy.toml")).unwrap();
    let used = std::fs::read_to_string(root.join("fixtures/clippy.toml")).unwrap();
    assert_eq!(
        shipped, used,
        "copy runtime/service-clippy.toml to fixtures/clippy.toml"
    );
    for banned in [
        "tokio::net::TcpStream::connect",
        "std::thread::spawn",
        "tokio::select",
    ] {
        assert!(
            shipped.contains(&format!("\"{banned}\"")),
            "{banned} is not flagged"
        );
    }
    // What deja now covers in library code is no longer flagged.
    for covered in ["tokio::spawn", "std::time::Instant::now", "rand::rng"] {
        assert!(
            !shipped.contains(&format!("\"{covered}\"")),
            "{covered} is covered, not a bypass"
        );
    }
}
