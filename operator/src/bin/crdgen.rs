//! Writes the CRDs generated from the Rust types into `crds/` and the chart's `charts/understudy/crds/` (or into
//! the one directory given).

fn main() -> anyhow::Result<()> {
    let dirs: Vec<String> = match std::env::args().nth(1) {
        Some(dir) => vec![dir],
        None => operator::crd::DIRS.iter().map(|d| d.to_string()).collect(),
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, yaml) in operator::crd::manifests() {
            let path = std::path::Path::new(&dir).join(file);
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
