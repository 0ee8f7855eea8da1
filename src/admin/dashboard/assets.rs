//! The dashboard's built front end (`dashboard/dist`), read into memory at
//! start-up so the pages need nothing from the network or the disk later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A file of the front end.
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// The front end's files by their path under `/ui/`.
pub struct Assets {
    files: HashMap<String, Asset>,
    /// Where they were read from.
    pub dir: PathBuf,
}

impl Assets {
    /// Reads the files under `dir`, which must hold `index.html`.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let mut files = HashMap::new();
        read(dir, dir, &mut files)?;
        if !files.contains_key("index.html") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no index.html", dir.display()),
            ));
        }
        Ok(Self {
            files,
            dir: dir.to_path_buf(),
        })
    }

    /// The file at `path`; the pages' own paths (`overview`, `tenants`…)
    /// get `index.html`, which routes in the browser.
    pub fn get(&self, path: &str) -> Option<&Asset> {
        let path = path.trim_start_matches('/');
        self.files.get(path).or_else(|| {
            let is_page = !path.contains('.');
            is_page.then(|| self.files.get("index.html")).flatten()
        })
    }

    /// Where the front end is looked for when `dashboard.assets` is unset:
    /// beside the working directory (a checkout), beside the executable's
    /// build folder (`target/debug/obleth`), and where the image puts it.
    pub fn default_dirs() -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("dashboard/dist")];
        if let Ok(exe) = std::env::current_exe() {
            if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
                dirs.push(repo.join("dashboard/dist"));
            }
        }
        dirs.push(PathBuf::from("/usr/share/obleth/dashboard"));
        dirs
    }
}

fn read(root: &Path, dir: &Path, files: &mut HashMap<String, Asset>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read(root, &path, files)?;
            continue;
        }
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let name = relative.to_string_lossy().replace('\\', "/");
        let content_type = content_type(&name);
        files.insert(
            name,
            Asset {
                content_type,
                bytes: std::fs::read(&path)?,
            },
        );
    }
    Ok(())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}
