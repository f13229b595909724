//! The README's complete programs are the files in `examples/`, word for
//! word (less their `//!` header), so what a reader pastes is what is built
//! and run with `cargo run --example NAME`.

#[test]
fn readme_programs_are_the_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for name in ["jobs", "mqueue_door", "inspect"] {
        let file = std::fs::read_to_string(format!("{root}/examples/{name}.rs")).unwrap();
        let body: String = file
            .lines()
            .skip_while(|l| l.starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        let block = format!("```rust,no_run\n{body}```\n");
        assert!(
            readme.contains(&block),
            "README.md does not show examples/{name}.rs as it is"
        );
    }
}
