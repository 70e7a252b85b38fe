//! Server bootstrap shared by every microshop service.
//!
//! A service crate brings its gRPC routes and a storage probe; this crate
//! wraps them in the same health, reflection, limits, shutdown and logging,
//! so every port of the mesh behaves alike for operators and Kubernetes.

pub mod auth;
pub mod config;
pub mod deadline;
pub mod errors;
pub mod faults;
pub mod limits;
pub mod methods;
pub mod metrics;
pub mod observe;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod starting;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod validate;

pub use config::{ConfigError, LogFormat, ServerArgs};
pub use errors::{DOMAIN, Reason, internal_status, rich_status};
pub use methods::Services;
pub use server::{LIVENESS, ServeError, StorageProbe, health_reporter, serve, serve_store};
pub use shutdown::shutdown_signal;
pub use tonic_health::server::HealthReporter;
