//! Settings every server shares, as one typed struct.
//!
//! Layers, lowest first: built-in defaults, `MICROSHOP_*` environment
//! variables, command-line flags (clap resolves env and flags in that order).
//! Service-specific settings live in each service's own config struct, which
//! flattens [`ServerArgs`] so there is one parse and one place to look.

use std::{path::PathBuf, time::Duration};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Settings shared by every server of the mesh.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory holding the embedded stores (one redb file per service).
    #[arg(long, env = "MICROSHOP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// MongoDB connection string; when set, every store of the service is
    /// on MongoDB instead of the embedded files (a replica set: the stores
    /// need multi-document transactions).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// MongoDB database; by default one per service (`microshop_<service>`).
    #[arg(long, env = "MICROSHOP_MONGODB_DATABASE")]
    pub mongodb_database: Option<String>,

    /// Log format.
    #[arg(long, env = "MICROSHOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Upper bound on the time one request may take, in milliseconds (a
    /// shorter client deadline wins).
    #[arg(long, env = "MICROSHOP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "MICROSHOP_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub max_message_bytes: usize,

    /// Requests served at once by one server; beyond it requests are shed
    /// with RESOURCE_EXHAUSTED rather than queued without bound.
    #[arg(
        long,
        env = "MICROSHOP_MAX_CONCURRENT_REQUESTS",
        default_value_t = 4096
    )]
    pub max_concurrent_requests: usize,

    /// Serve Prometheus metrics on `http://ADDR/metrics` (e.g.
    /// `0.0.0.0:9464`). `microshop up` serves them on 127.0.0.1:9464
    /// unless told otherwise; `serve` only when set.
    #[arg(long, env = "MICROSHOP_METRICS_ADDR", value_name = "ADDR")]
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
            mongodb_database: None,
            log_format: LogFormat::Text,
            request_timeout_ms: 30_000,
            max_message_bytes: 256 * 1024,
            max_concurrent_requests: 4096,
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
