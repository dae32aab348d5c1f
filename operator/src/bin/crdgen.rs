//! Writes the CRDs generated from the Rust types into `crds/` (or the directory given).

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "crds".into());
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in operator::crd::manifests() {
        let path = std::path::Path::new(&dir).join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
