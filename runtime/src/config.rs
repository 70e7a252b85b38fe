//! Settings every server shares, as one typed struct.
//!
//! Layers, lowest first: built-in defaults, `MICROSHOP_*` environment
//! variables, command-line flags (clap resolves env and flags in that order).
//! Service-specific settings live in each service's own config struct, which
//! flattens [`ServerArgs`] so there is one parse and one place to look.
//!
//! A secret setting also has a `*_FILE` form naming a file that holds it
//! (`MONGODB_URI_FILE`, like `MICROSHOP_AUTH_HS256_SECRET_FILE`), so a
//! Kubernetes Secret can be mounted as a file rather than put in the
//! environment, where `/proc/<pid>/environ`, crash reports and `kubectl
//! describe` show it. Giving both forms is a start-up error, not a silent
//! precedence: two sources of one secret are a mistake worth stopping for.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// A setting that cannot be used as given (start-up only).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A secret setting is given both inline and as a file.
    #[error(
        "both {env} ({flag}) and {env}_FILE ({flag}-file) are set: set only one \
         ({env}_FILE for a mounted secret)"
    )]
    BothSet {
        /// The inline form's variable, e.g. `MONGODB_URI`.
        env: &'static str,
        /// Its flag, e.g. `--mongodb-uri`.
        flag: &'static str,
    },
    /// The file of a secret setting cannot be read.
    #[error(
        "cannot read {env}_FILE {path}: {source}; point it at a readable file \
         (a mounted Secret key)"
    )]
    Unreadable {
        /// The inline form's variable.
        env: &'static str,
        /// The file named.
        path: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The file of a secret setting holds nothing but whitespace.
    #[error("{env}_FILE {path} is empty; write the value into it (one line)")]
    Empty {
        /// The inline form's variable.
        env: &'static str,
        /// The file named.
        path: PathBuf,
    },
}

/// A secret setting: its inline variable and flag (the file form is the
/// same with `_FILE` / `-file` appended).
#[derive(Clone, Copy, Debug)]
struct Secret {
    env: &'static str,
    flag: &'static str,
}

const MONGODB_URI: Secret = Secret {
    env: "MONGODB_URI",
    flag: "--mongodb-uri",
};

impl Secret {
    /// The value from whichever form is set. The file's trailing whitespace
    /// (the newline editors and `echo` add) is not part of the value. Errors
    /// name the settings and the file, never the value.
    fn resolve(
        self,
        inline: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<String>, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(ConfigError::BothSet {
                env: self.env,
                flag: self.flag,
            }),
            (Some(value), None) => Ok(Some(value.to_owned())),
            (None, None) => Ok(None),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                        env: self.env,
                        path: path.to_owned(),
                        source,
                    })?;
                let value = text.trim_end();
                if value.is_empty() {
                    return Err(ConfigError::Empty {
                        env: self.env,
                        path: path.to_owned(),
                    });
                }
                Ok(Some(value.to_owned()))
            }
        }
    }
}

/// An hour in milliseconds: the longest timeout a setting takes (longer
/// ones are mistakes, and tonic refuses a timeout past about 10^17 ms by
/// panicking).
pub const HOUR_MS: u64 = 3_600_000;

/// A listen address: `IP:PORT`, with an example when it is not one (the
/// standard parser says only "invalid socket address syntax").
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        "expected IP:PORT with a port from 0 to 65535, e.g. 127.0.0.1:50051, 0.0.0.0:50051 or \
         [::]:50051 (a host name such as localhost is not resolved)"
            .to_owned()
    })
}

/// A parser for a `usize` setting in `min..=max`: a bad value stops the
/// start, naming the flag, instead of a server that refuses every call.
pub fn usize_in(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min..=max)
}

/// Settings shared by every server of the mesh.
#[derive(Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory holding the embedded stores (one fjall database per service).
    #[arg(long, env = "MICROSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// MongoDB connection string; when set, every store of the service is
    /// on MongoDB instead of the embedded files (a replica set: the stores
    /// need multi-document transactions).
    /// Prefer `--mongodb-uri-file`: a value here is visible in the
    /// process's environment.
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// File holding the MongoDB connection string (e.g. a mounted Secret;
    /// a trailing newline is ignored). Read at start; instead of, never
    /// with, `--mongodb-uri`.
    #[arg(long, env = "MONGODB_URI_FILE", value_name = "PATH")]
    pub mongodb_uri_file: Option<PathBuf>,

    /// MongoDB database; by default one per service (`microshop_<service>`).
    #[arg(long, env = "MICROSHOP_MONGODB_DATABASE")]
    pub mongodb_database: Option<String>,

    /// Log format.
    #[arg(long, env = "MICROSHOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Upper bound on the time one request may take, in milliseconds (a
    /// shorter client deadline wins).
    #[arg(
        long,
        env = "MICROSHOP_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..=HOUR_MS)
    )]
    pub request_timeout_ms: u64,

    /// Largest request message accepted, in bytes.
    #[arg(
        long,
        env = "MICROSHOP_MAX_MESSAGE_BYTES",
        default_value_t = 256 * 1024,
        value_parser = usize_in(1024, 1 << 30)
    )]
    pub max_message_bytes: usize,

    /// Requests served at once by one server; beyond it requests are shed
    /// with RESOURCE_EXHAUSTED rather than queued without bound.
    #[arg(
        long,
        env = "MICROSHOP_MAX_CONCURRENT_REQUESTS",
        default_value_t = 4096,
        value_parser = usize_in(1, 1 << 20)
    )]
    pub max_concurrent_requests: usize,

    /// Participants: barrier entries (replay and anti-hanging markers of
    /// saga calls) older than this many seconds are purged; 0 keeps them
    /// forever. Business records (orders, reservations, points ledgers)
    /// are kept. Keep it far above the longest a saga call can arrive late
    /// (a call timeout, a lease): below a day a warning is logged.
    #[arg(
        long,
        env = "MICROSHOP_BARRIER_RETENTION_SECS",
        default_value_t = 604_800
    )]
    pub barrier_retention_secs: u64,

    /// Serve Prometheus metrics on `http://ADDR/metrics` (e.g.
    /// `0.0.0.0:9464`). `microshop up` serves them on 127.0.0.1:9464
    /// unless told otherwise; `serve` only when set.
    #[arg(
        long,
        env = "MICROSHOP_METRICS_ADDR",
        value_name = "ADDR",
        value_parser = socket_addr
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Authentication (bearer JWT); off unless a key file is set.
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,

    /// Per-customer rate limit on PlaceOrder; off unless a rate is set.
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,

    /// TLS and mTLS between services; off unless a certificate is set.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// Fault injection on the saga RPCs of participants, for tests and
    /// chaos drills only (e.g. `seed=7,unavailable=0.03,drop=0.03,late=0.01`;
    /// see `microshop_runtime::faults`). Off unless set.
    #[arg(long, env = "MICROSHOP_FAULTS", value_name = "SPEC")]
    pub faults: Option<crate::faults::FaultConfig>,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            mongodb_uri: None,
            mongodb_uri_file: None,
            mongodb_database: None,
            log_format: LogFormat::Text,
            request_timeout_ms: 30_000,
            max_message_bytes: 256 * 1024,
            max_concurrent_requests: 4096,
            barrier_retention_secs: 604_800,
            metrics_addr: None,
            auth: crate::auth::AuthArgs::default(),
            limits: crate::limits::LimitArgs::default(),
            tls: crate::tls::TlsArgs::default(),
            faults: None,
        }
    }
}

impl ServerArgs {
    /// Default settings with the given data directory (what tests use).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// The MongoDB connection string, from `MONGODB_URI` or the file
    /// `MONGODB_URI_FILE` names; `None` for the embedded stores.
    pub fn resolved_mongodb_uri(&self) -> Result<Option<String>, ConfigError> {
        MONGODB_URI.resolve(
            self.mongodb_uri.as_deref(),
            self.mongodb_uri_file.as_deref(),
        )
    }

    /// Checks, before a port is bound or a store created, what the servers
    /// would otherwise refuse only once they start: the authentication
    /// keys and their issuer, the TLS files, and the form of the MongoDB
    /// connection string. Call after [`Self::load_secret_files`].
    pub fn check(&self) -> Result<(), String> {
        crate::auth::AuthLayer::from_args(&self.auth)?;
        self.tls.server_config()?;
        self.tls.identity_layer()?;
        self.tls.client_config()?;
        if let Some(uri) = self.resolved_mongodb_uri().map_err(|e| e.to_string())?
            && !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://"))
        {
            return Err(
                "the MongoDB connection string (MONGODB_URI or MONGODB_URI_FILE) \
                 must start with mongodb:// or mongodb+srv://"
                    .into(),
            );
        }
        Ok(())
    }

    /// Reads every `*_FILE` secret into its setting, once at start-up, so
    /// a bad file stops the process before it binds a port.
    pub fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        self.mongodb_uri = self.resolved_mongodb_uri()?;
        self.mongodb_uri_file = None;
        Ok(())
    }

    /// The MongoDB database of `service`: the configured one, or
    /// `microshop_<service>`.
    pub fn mongodb_database(&self, service: &str) -> String {
        self.mongodb_database
            .clone()
            .unwrap_or_else(|| format!("microshop_{service}"))
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// By hand, so that printing the settings never prints a secret.
impl fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("ServerArgs")
            .field("data_dir", &self.data_dir)
            .field("mongodb_uri", &redacted(self.mongodb_uri.is_some()))
            .field("mongodb_uri_file", &self.mongodb_uri_file)
            .field("mongodb_database", &self.mongodb_database)
            .field("log_format", &self.log_format)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("metrics_addr", &self.metrics_addr)
            .field("auth", &self.auth)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .field("faults", &self.faults)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(inline: Option<&str>, file: Option<&Path>) -> ServerArgs {
        ServerArgs {
            mongodb_uri: inline.map(str::to_owned),
            mongodb_uri_file: file.map(Path::to_path_buf),
            ..ServerArgs::default()
        }
    }

    #[test]
    fn the_uri_file_is_read_without_its_trailing_newline() {
        let dir = tempdir();
        let path = dir.join("uri");
        for content in [
            "mongodb://a:b@h:1/?replicaSet=rs0\n",
            "mongodb://a:b@h:1/?replicaSet=rs0\r\n",
        ] {
            std::fs::write(&path, content).unwrap();
            let mut a = args(None, Some(&path));
            assert_eq!(
                a.resolved_mongodb_uri().unwrap().as_deref(),
                Some("mongodb://a:b@h:1/?replicaSet=rs0")
            );
            a.load_secret_files().unwrap();
            assert_eq!(
                a.mongodb_uri.as_deref(),
                Some("mongodb://a:b@h:1/?replicaSet=rs0")
            );
            assert!(a.mongodb_uri_file.is_none());
        }
        assert_eq!(
            args(Some("mongodb://x"), None)
                .resolved_mongodb_uri()
                .unwrap()
                .as_deref(),
            Some("mongodb://x")
        );
        assert!(args(None, None).resolved_mongodb_uri().unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn both_forms_empty_and_missing_files_are_named_never_the_secret() {
        let dir = tempdir();
        let path = dir.join("uri");
        std::fs::write(&path, "mongodb://u:hunter2@h/").unwrap();
        let both = args(Some("mongodb://u:hunter2@h/"), Some(&path))
            .resolved_mongodb_uri()
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("MONGODB_URI (--mongodb-uri)") && both.contains("MONGODB_URI_FILE"),
            "{both}"
        );
        std::fs::write(&path, "\n").unwrap();
        let empty = args(None, Some(&path))
            .resolved_mongodb_uri()
            .unwrap_err()
            .to_string();
        assert!(
            empty.contains("MONGODB_URI_FILE") && empty.contains("is empty"),
            "{empty}"
        );
        let missing = args(None, Some(&dir.join("nope")))
            .resolved_mongodb_uri()
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read MONGODB_URI_FILE") && missing.contains("nope"),
            "{missing}"
        );
        for text in [&both, &empty, &missing] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        let debug = format!("{:?}", args(Some("mongodb://u:hunter2@h/"), None));
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "microshop-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
