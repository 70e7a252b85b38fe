//! `microshop up` as one child process: the four services in one process
//! on free loopback ports, with one `/metrics`. For suites that test the
//! mesh as a user starts it rather than its processes one by one.

use std::{net::SocketAddr, time::Duration};

use microshop::mesh::{MeshAddrs, MeshClients};
use tempfile::TempDir;
use tonic::transport::Channel;

use super::{
    READY_WITHIN, Svc, clients_at,
    process::{Process, Spawn, endpoint, free_addr, lazy_channel},
};

/// Attempts on new ports if one was taken between picking and binding.
const ATTEMPTS: usize = 3;

/// A running `microshop up`; dropping it kills it (and prints its output
/// if the test is panicking).
pub struct Up {
    pub process: Process,
    pub addrs: MeshAddrs,
    /// Where it serves `/metrics`.
    pub metrics: SocketAddr,
    dir: TempDir,
}

impl Up {
    /// Starts `microshop up ARGS` with `env` on free ports and a data
    /// directory of its own, and waits until each service answers SERVING
    /// for its own name. Starts again on other ports if it could not bind
    /// one; panics on any other failure.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            let addrs = MeshAddrs {
                orchestrator: free_addr(),
                inventory: free_addr(),
                loyalty: free_addr(),
                order: free_addr(),
            };
            let metrics = free_addr();
            let listen =
                |flag: &str, addr: SocketAddr| [format!("--{flag}-listen"), addr.to_string()];
            let mut process = Spawn::microshop(format!("up-{attempt}"))
                .arg("up")
                .arg("--data-dir")
                .arg(dir.path().join(format!("data-{attempt}")))
                .args(listen("orchestrator", addrs.orchestrator))
                .args(listen("inventory", addrs.inventory))
                .args(listen("loyalty", addrs.loyalty))
                .args(listen("order", addrs.order))
                .args(["--metrics-addr".to_owned(), metrics.to_string()])
                .args(args.iter().copied())
                .envs(env.iter().copied())
                .spawn();
            let mut started = Ok(());
            for (svc, addr) in [
                (Svc::Inventory, addrs.inventory),
                (Svc::Loyalty, addrs.loyalty),
                (Svc::Order, addrs.order),
                (Svc::Orchestrator, addrs.orchestrator),
            ] {
                let endpoint = endpoint(&format!("http://{addr}"), Duration::from_secs(1));
                started = process
                    .wait_serving(&endpoint, svc.grpc_name(), READY_WITHIN)
                    .await;
                if started.is_err() {
                    break;
                }
            }
            match started {
                Ok(()) => {
                    return Self {
                        process,
                        addrs,
                        metrics,
                        dir,
                    };
                }
                Err(why) if process.could_not_bind().await => {
                    eprintln!("microshop up could not bind ({why}); other ports");
                    last = why;
                }
                Err(why) => panic!("{why}"),
            }
        }
        panic!("microshop up did not start in {ATTEMPTS} attempts: {last}");
    }

    /// Where `svc` listens (a peer is not part of `up`).
    pub fn addr(&self, svc: Svc) -> SocketAddr {
        match svc {
            Svc::Orchestrator => self.addrs.orchestrator,
            Svc::Inventory => self.addrs.inventory,
            Svc::Loyalty => self.addrs.loyalty,
            Svc::Order => self.addrs.order,
            Svc::Peer(_) => panic!("microshop up runs one orchestrator"),
        }
    }

    /// A channel to `svc` that connects on first use.
    pub fn channel(&self, svc: Svc) -> Channel {
        lazy_channel(self.addr(svc))
    }

    /// Clients of the four services, connected lazily.
    pub fn clients(&self) -> MeshClients {
        clients_at(&self.addrs)
    }

    /// The data directories' parent.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
