//! Loading the cookie: from `CONC_COOKIE`, from a file, or from `~/.conc/cookie` (created with a
//! random value and mode 0600 on first use, like `~/.erlang.cookie`).

use std::io::Write;
use std::path::{Path, PathBuf};

use conc_wire::Cookie;

/// The environment variable that holds the cookie.
pub const COOKIE_ENV: &str = "CONC_COOKIE";

/// Why the cookie could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CookieLoadError {
    /// The file could not be read or created.
    #[error("cookie file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file can be read by group or others.
    #[error("cookie file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The cookie is empty.
    #[error("cookie from {0} is empty")]
    Empty(String),
    /// There is no home directory for the default file.
    #[error("no home directory: set CONC_COOKIE or give a cookie file")]
    NoHome,
}

/// The default cookie file: `~/.conc/cookie`.
pub fn default_cookie_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".conc").join("cookie"))
}

/// Loads the cookie: `CONC_COOKIE` if set, else `file` if given, else `~/.conc/cookie`
/// (created with a random value and mode 0600 if missing). A cookie file readable by group or
/// others is refused.
pub fn load_cookie(file: Option<&Path>) -> Result<Cookie, CookieLoadError> {
    if let Ok(v) = std::env::var(COOKIE_ENV) {
        return v
            .parse()
            .map_err(|_| CookieLoadError::Empty(COOKIE_ENV.to_string()));
    }
    match file {
        Some(path) => read_cookie_file(path),
        None => {
            let path = default_cookie_path().ok_or(CookieLoadError::NoHome)?;
            if !path.exists() {
                create_cookie_file(&path)?;
            }
            read_cookie_file(&path)
        }
    }
}

/// Reads a cookie file, refusing one readable by group or others.
pub fn read_cookie_file(path: &Path) -> Result<Cookie, CookieLoadError> {
    let io = |source| CookieLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CookieLoadError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(io)?;
    text.parse()
        .map_err(|_| CookieLoadError::Empty(path.display().to_string()))
}

/// Creates a cookie file with 32 random bytes (hex) and mode 0600.
pub fn create_cookie_file(path: &Path) -> Result<(), CookieLoadError> {
    let io = |source| CookieLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(hex.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "conc-cookie-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("cookie")
    }

    #[test]
    fn created_file_is_private_and_readable_back() {
        let path = tmp("create");
        create_cookie_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let c = read_cookie_file(&path).unwrap();
        assert_eq!(c.as_bytes().len(), 64);
        // A second creation does not overwrite.
        assert!(create_cookie_file(&path).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = tmp("perm");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_cookie_file(&path).unwrap_err();
        assert!(matches!(err, CookieLoadError::Permissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn empty_file_is_refused() {
        let path = tmp("empty");
        create_cookie_file(&path).unwrap();
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            read_cookie_file(&path),
            Err(CookieLoadError::Empty(_))
        ));
    }
}
