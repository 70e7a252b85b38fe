//! Services one by one, each on its own listener with its own stop
//! switch (for outage scenarios), and the ports they listen on.

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use microshop_runtime::ServeError;
use orchestrator::{EngineConfig, OrchestratorConfig, ParticipantUrls};
use tokio::{
    net::TcpListener,
    sync::oneshot,
    task::JoinHandle,
    time::{Instant, timeout},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    poll::{health_client, wait_health},
    settings::{CONNECT_WITHIN, EARN_AMOUNT_PER_POINT, STOP_WITHIN},
};

/// A participant service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Participant {
    /// inventory-svc.
    Inventory,
    /// loyalty-svc.
    Loyalty,
    /// order-svc.
    Order,
}

/// One service running on its own task, stopped through its oneshot.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    fn spawn<F>(addr: SocketAddr, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let (stop, rx) = oneshot::channel();
        Self {
            addr,
            stop: Some(stop),
            task: tokio::spawn(run(rx)),
        }
    }

    /// Waits (bounded) until its health is SERVING: a store on MongoDB
    /// opens once its indexes exist, and the service answers UNAVAILABLE
    /// until then.
    pub async fn wait_serving(&self) {
        wait_health(
            &health_client(self.addr),
            "",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await;
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it stopped by itself (crashed or failed to start).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Signals its oneshot and waits (bounded) for it to stop cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(STOP_WITHIN, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("server on {} did not stop in time", self.addr))
            .expect("the server task did not panic")
            .unwrap_or_else(|e| panic!("server on {} stopped with an error: {e:?}", self.addr));
    }
}

async fn until(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Binds `addr` (port 0 for a free one).
pub async fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// A free loopback address.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port held for a service that is down: bound but not listening, so a
/// connection to it is refused, as by a stopped service, while no other
/// socket can take the port until [`Reserved::listen`] serves on it.
#[derive(Debug)]
pub struct Reserved {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Reserved {
    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> TcpListener {
        self.socket
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen on {}: {e}", self.addr))
    }
}

/// Reserves `addr` (port 0 for a free one). A port a server has just
/// released may be held for a moment by a connection of another test (all
/// draw from the same ephemeral range): the bind is tried again, for up to
/// [`CONNECT_WITHIN`].
pub async fn reserve(addr: SocketAddr) -> Reserved {
    let deadline = Instant::now() + CONNECT_WITHIN;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        // As TcpListener::bind does: the released server's connections in
        // TIME_WAIT do not keep the port.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr) {
            Ok(()) => {
                let addr = socket.local_addr().expect("a bound socket has an address");
                return Reserved { socket, addr };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reserve {addr}: {e}"),
        }
    }
}

/// Starts a participant on `listener` with its store under `data_dir`.
pub fn spawn_participant(kind: Participant, listener: TcpListener, data_dir: &Path) -> Server {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let server = microshop_runtime::testing::server_args(data_dir);
    match kind {
        Participant::Inventory => {
            let config = inventory_svc::InventoryConfig::new(server);
            Server::spawn(addr, |rx| inventory_svc::run(listener, config, until(rx)))
        }
        Participant::Loyalty => {
            let mut config = loyalty_svc::LoyaltyConfig::new(server);
            config.earn_amount_per_point = EARN_AMOUNT_PER_POINT;
            Server::spawn(addr, |rx| loyalty_svc::run(listener, config, until(rx)))
        }
        Participant::Order => {
            let config = order_svc::OrderConfig::new(server);
            Server::spawn(addr, |rx| order_svc::run(listener, config, until(rx)))
        }
    }
}

/// Starts the orchestrator on `listener`, its saga log under `data_dir`,
/// calling the participants at `participants`.
pub fn spawn_orchestrator(
    listener: TcpListener,
    data_dir: &Path,
    participants: ParticipantUrls,
    engine: EngineConfig,
) -> Server {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut config = OrchestratorConfig::new(
        microshop_runtime::testing::server_args(data_dir),
        participants,
    );
    config.engine = engine;
    Server::spawn(addr, |rx| orchestrator::run(listener, config, until(rx)))
}
