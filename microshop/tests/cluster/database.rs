//! The test's own MongoDB: a SecantusDB server (`MICROSHOP_TEST_SECANTUSD`)
//! on a port and data directory of its own, so a test can stop it the way
//! an operator does and start it again where the services expect it.
//! Tests that only need a MongoDB share the script's server
//! (`MICROSHOP_TEST_MONGODB_URI`) instead: this one is for outages.

use std::time::Duration;

use tempfile::TempDir;

use super::process::{Process, Spawn, free_addr};

/// How long the server may take to listen after its start.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);
/// How long a SIGTERMed server may take to exit before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A SecantusDB server; dropping it SIGKILLs it.
pub struct Database {
    command: String,
    port: u16,
    dir: TempDir,
    process: Option<Process>,
}

impl Database {
    /// Starts `command` (the `secantusd-py` path) on a free loopback port
    /// and waits until it accepts connections.
    pub fn start(command: String) -> Self {
        let mut db = Self {
            command,
            port: free_addr().port(),
            dir: tempfile::tempdir().expect("temporary directory"),
            process: None,
        };
        db.up();
        db
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string of the services.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn spawn(&self) -> Process {
        Spawn::program("secantusd", &self.command)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path())
            .args(["--log-level", "WARNING"])
            .spawn()
    }

    /// Starts the server (again) and waits until it accepts connections.
    /// Its port was free while it was down, so another test's connection
    /// may hold it for a moment: a server that exits before listening (it
    /// could not bind) is started again on the same port, within the same
    /// 30 s.
    pub fn up(&mut self) {
        // Kept in `self` at once, so a failed wait still kills it on drop.
        self.process = Some(self.spawn());
        let deadline = std::time::Instant::now() + LISTEN_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the database did not listen within {LISTEN_WITHIN:?}"
            );
            let exited = self.process.as_mut().is_some_and(|p| p.exited().is_some());
            if exited {
                eprintln!(
                    "the database exited before listening on {}; again",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(250));
                self.process = Some(self.spawn());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an operator does (SIGTERM, SIGKILL after
    /// 20 s) and reaps it.
    pub fn down(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP_WITHIN);
        }
    }

    /// [`Database::down`], then [`Database::up`]: same port, same data.
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }
}
