//! One child process of a test: how it is spawned ([`Spawn`]), what it
//! wrote ([`Process::stderr`], [`Process::wait_line`]), whether it serves
//! ([`Process::wait_serving`]), and how it ends (SIGKILL, SIGTERM, on drop).
//!
//! Everything that runs a process in these tests goes through here, the
//! [`Cluster`](super::Cluster) of `microshop serve` processes as much as a
//! lone `microshop up`, a refused start or the test's SecantusDB, so that
//! the environment they see, the reading of their output and the failure
//! report are the same everywhere:
//!
//! - `microshop` starts with nothing of the test's environment that
//!   configures it (`MICROSHOP_*`, `MONGODB_*`, `OTEL_*`): only what the
//!   test sets.
//! - Its stdout and stderr are read line by line on two threads. The lines
//!   are kept (a test waits on them without racing the reader) and copied,
//!   tagged, into a [`Tail`] that is printed when the test panics.
//! - A command prefix (`ip netns exec NS`, say) runs the program under a
//!   wrapper that execs it, so its pid, signals and pipes are the program's.
//!
//! Every wait is bounded: a line, a health answer or an exit either comes
//! within the time given or the wait fails, naming what it waited for.

use std::{
    collections::VecDeque,
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::Notify,
    time::{Instant, sleep, timeout_at},
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::Svc;

/// The `microshop` binary of this package.
pub const BIN: &str = env!("CARGO_BIN_EXE_microshop");
/// Interval of the bounded polls that have nothing to wake them (health,
/// a process's exit).
pub const POLL: Duration = Duration::from_millis(20);
/// Lines a [`Tail`] keeps for the failure report.
const TAIL_LINES: usize = 3_000;
/// What a process prints when it could not bind one of its ports.
const BIND_FAILURES: [&str; 2] = ["cannot listen on", "cannot serve metrics on"];
/// Variables of the test's environment a `microshop` child never inherits.
const SCRUBBED: [&str; 3] = ["MICROSHOP_", "MONGODB_", "OTEL_"];

/// A free port on loopback: bound to port 0, read, released.
pub fn free_addr() -> SocketAddr {
    free_addr_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free port on `ip`, which must be an address of this host.
pub fn free_addr_on(ip: IpAddr) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// Starts of one process on fresh free ports before a bind failure that
/// keeps coming back is a failure.
const FREE_PORT_ATTEMPTS: usize = 3;

/// Starts what `spawn` builds for a free loopback port and waits up to
/// `within` for its health entry `entry` to answer SERVING there over
/// plain HTTP/2 (see [`start_on_free_port_with`]).
pub async fn start_on_free_port(
    spawn: impl FnMut(SocketAddr) -> Spawn,
    entry: &str,
    within: Duration,
) -> Result<(Process, SocketAddr), String> {
    let health = |addr| endpoint(&format!("http://{addr}"), Duration::from_secs(1));
    start_on_free_port_with(spawn, health, entry, within).await
}

/// Starts what `spawn` builds for a free loopback port and waits up to
/// `within` for its health entry `entry` to answer SERVING at the
/// endpoint `health` gives for that port. Another test may take the port
/// between [`free_addr`] and the process's bind: then it starts again on
/// another port. `Err` on any other failure, with the process's stderr.
pub async fn start_on_free_port_with(
    mut spawn: impl FnMut(SocketAddr) -> Spawn,
    health: impl Fn(SocketAddr) -> Endpoint,
    entry: &str,
    within: Duration,
) -> Result<(Process, SocketAddr), String> {
    let mut last = String::new();
    for _ in 0..FREE_PORT_ATTEMPTS {
        let addr = free_addr();
        let mut proc = spawn(addr).spawn();
        match proc.wait_serving(&health(addr), entry, within).await {
            Ok(()) => return Ok((proc, addr)),
            Err(why) if proc.could_not_bind().await => {
                eprintln!(
                    "{} could not bind {addr}; starting it on another port",
                    proc.tag()
                );
                last = why;
            }
            Err(why) => return Err(format!("{why}: {}", proc.stderr().join("\n"))),
        }
    }
    Err(format!(
        "not started in {FREE_PORT_ATTEMPTS} attempts on free ports: {last}"
    ))
}

/// An endpoint for health checks and clients: a short connect timeout, so
/// a service that is down fails fast; `timeout` bounds each call.
pub fn endpoint(url: &str, timeout: Duration) -> Endpoint {
    Endpoint::from_shared(url.to_owned())
        .unwrap_or_else(|e| panic!("{url} is not a valid url: {e}"))
        .connect_timeout(Duration::from_millis(250))
        .timeout(timeout)
}

/// A channel to `addr` that connects on first use (and again after the
/// service restarts), so a service that is down fails only its own calls.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid url")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// Whether the health entry `entry` (`""`: the overall one) at `endpoint`
/// answers SERVING.
pub async fn serving(endpoint: &Endpoint, entry: &str) -> bool {
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: entry.to_owned(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// `microshop serve SVC --listen LISTEN --data-dir DATA_DIR`: the start of
/// every `serve` command line (authentication and the rest are the
/// caller's).
pub fn serve(svc: Svc, listen: SocketAddr, data_dir: &Path) -> Spawn {
    Spawn::microshop(svc.name())
        .args(["serve", svc.name(), "--listen"])
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
}

// ---------------------------------------------------------------------------
// The failure report
// ---------------------------------------------------------------------------

/// The last lines written by a group of processes (a cluster's, or one
/// process's own), each tagged with the process and stream it came from.
#[derive(Default)]
pub struct Tail {
    lines: Mutex<VecDeque<String>>,
}

impl Tail {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Prints the lines kept on stderr, between a header naming `what`
    /// and a footer.
    pub fn print(&self, what: &str) {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("---- last {} output lines of {what} ----", lines.len());
        for line in lines.iter() {
            eprintln!("{line}");
        }
        eprintln!("---- end of the output of {what} ----");
    }
}

// ---------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------

/// A command line to start: program, optional wrapper, arguments and
/// environment. Build it, then [`Spawn::spawn`] it.
#[must_use]
pub struct Spawn {
    name: String,
    program: OsString,
    prefix: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    scrub: bool,
    tail: Option<Arc<Tail>>,
}

impl Spawn {
    /// This package's `microshop`, named `name` in the logs, with no
    /// `MICROSHOP_*`, `MONGODB_*` or `OTEL_*` variable of the test's
    /// environment, and `NO_COLOR` set.
    pub fn microshop(name: impl Into<String>) -> Self {
        Self {
            scrub: true,
            ..Self::program(name, BIN)
        }
        .env("NO_COLOR", "1")
    }

    /// Any program (the test's SecantusDB), with the test's environment.
    pub fn program(name: impl Into<String>, program: impl Into<OsString>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            prefix: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            scrub: false,
            tail: None,
        }
    }

    /// Its name in the logs and messages.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs the program under `wrapper`, a command that execs its
    /// arguments (`["ip", "netns", "exec", "NS"]`).
    pub fn prefix<S: AsRef<OsStr>>(mut self, wrapper: impl IntoIterator<Item = S>) -> Self {
        self.prefix = wrapper.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env.extend(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Copies the output into `tail` (a cluster's), which its owner prints
    /// on a failure; without one the process keeps and prints its own.
    pub fn tail(mut self, tail: &Arc<Tail>) -> Self {
        self.tail = Some(Arc::clone(tail));
        self
    }

    /// Starts it, stdin from /dev/null, stdout and stderr read by threads.
    pub fn spawn(self) -> Process {
        let mut cmd = match self.prefix.split_first() {
            Some((wrapper, rest)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(rest).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args);
        if self.scrub {
            for (key, _) in std::env::vars_os() {
                let name = key.to_string_lossy();
                if SCRUBBED.iter().any(|p| name.starts_with(p)) {
                    cmd.env_remove(&key);
                }
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot spawn {} ({}): {e}",
                self.name,
                self.program.to_string_lossy()
            )
        });
        let tag = format!("{} pid {}", self.name, child.id());
        let own_tail = self.tail.is_none();
        let tail = self.tail.unwrap_or_default();
        let output = Arc::new(Output::default());
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        read_lines(stderr, Stream::Stderr, &tag, &output, &tail);
        read_lines(stdout, Stream::Stdout, &tag, &output, &tail);
        Process {
            tag,
            child,
            output,
            cursor: 0,
            tail,
            own_tail,
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// What a process wrote so far, shared with its reader threads.
#[derive(Default)]
struct Output {
    stderr: Mutex<Vec<String>>,
    stdout: Mutex<Vec<String>>,
    /// Streams not closed yet.
    open: AtomicUsize,
    /// Woken on every line and on every stream's end.
    changed: Notify,
}

impl Output {
    fn lines(&self, stream: Stream) -> &Mutex<Vec<String>> {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    fn snapshot(&self, stream: Stream) -> Vec<String> {
        self.lines(stream)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn closed(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }
}

/// Reads `stream` line by line on a thread until it closes (the process
/// ended, or closed it): each line is kept and goes to the tail.
fn read_lines(
    stream: impl Read + Send + 'static,
    which: Stream,
    tag: &str,
    output: &Arc<Output>,
    tail: &Arc<Tail>,
) {
    let name = match which {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let tag = format!("{tag} {name}");
    let output = Arc::clone(output);
    let tail = Arc::clone(tail);
    output.open.fetch_add(1, Ordering::SeqCst);
    std::thread::Builder::new()
        .name(tag.clone())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                tail.push(format!("[{tag}] {line}"));
                output
                    .lines(which)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                output.changed.notify_waiters();
            }
            output.open.fetch_sub(1, Ordering::SeqCst);
            output.changed.notify_waiters();
        })
        .expect("spawn a pipe reader thread");
}

// ---------------------------------------------------------------------------
// A running process
// ---------------------------------------------------------------------------

/// A child process. Dropping it SIGKILLs and reaps it; if the test is
/// panicking and the process keeps its own tail, the tail is printed.
pub struct Process {
    tag: String,
    child: Child,
    output: Arc<Output>,
    /// Stderr lines [`Process::wait_line`] has passed over.
    cursor: usize,
    tail: Arc<Tail>,
    own_tail: bool,
}

/// How a process ended, and all it wrote.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
    pub stdout: String,
}

impl Process {
    /// Its name and pid, as its lines are tagged.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (how an operator or Kubernetes stops it); SIGKILL if it is
    /// still running after `within`. Reaps it and returns how it ended.
    pub fn stop(&mut self, within: Duration) -> ExitStatus {
        if self.exited().is_none() {
            // std has no SIGTERM and this crate forbids unsafe: kill(1).
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.id().to_string())
                .status();
        }
        let deadline = std::time::Instant::now() + within;
        while self.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        self.child.wait().expect("reap the child")
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.output.snapshot(Stream::Stderr)
    }

    /// Every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.output.snapshot(Stream::Stdout)
    }

    /// Waits for a stderr line containing `needle` after those an earlier
    /// call returned or passed over; returns it. Panics if the process
    /// closes its stderr first, or after `within`.
    pub async fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let closed = self.output.closed();
            {
                let lines = self.output.stderr.lock().unwrap_or_else(|e| e.into_inner());
                let found = lines[self.cursor..].iter().position(|l| l.contains(needle));
                if let Some(i) = found {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
                self.cursor = lines.len();
            }
            assert!(
                !closed,
                "{} closed its stderr before printing {needle:?}",
                self.tag
            );
            if timeout_at(deadline, changed).await.is_err() {
                panic!("{} did not print {needle:?} within {within:?}", self.tag);
            }
        }
    }

    /// Waits until `done` holds for the stderr lines so far; returns them.
    /// Panics after `within`, naming `what` and showing the lines.
    pub async fn wait_lines(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let lines = self.stderr();
            if done(&lines) {
                return lines;
            }
            if timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{}: {what}: not printed within {within:?}: {lines:#?}",
                    self.tag
                );
            }
        }
    }

    /// Polls health entry `entry` at `endpoint` until SERVING; an error if
    /// the process exits first or is not serving within `within`. A
    /// process that could not bind exits at once, so an answer while it is
    /// still up after it is its own, not another test's on the same port.
    pub async fn wait_serving(
        &mut self,
        endpoint: &Endpoint,
        entry: &str,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let url = endpoint.uri().to_string();
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("{} at {url} exited with {status}", self.tag));
            }
            if serving(endpoint, entry).await {
                if let Some(status) = self.exited() {
                    return Err(format!("{} at {url} exited with {status}", self.tag));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} at {url} not SERVING ({entry:?}) within {within:?}",
                    self.tag
                ));
            }
            sleep(POLL).await;
        }
    }

    /// Whether the process exited saying it could not bind a port (reads
    /// its stderr to the end: the pipe closes with the process).
    pub async fn could_not_bind(&mut self) -> bool {
        if self.exited().is_none() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let said = self
                .stderr()
                .iter()
                .any(|l| BIND_FAILURES.iter().any(|b| l.contains(b)));
            if said || self.output.closed() {
                return said;
            }
            if timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Waits for the process to exit on its own within `within`; then its
    /// status and everything it wrote. If it is still running: `Err` with
    /// its stderr so far (the caller says why that is wrong; dropping the
    /// process kills it).
    pub fn exit_within(&mut self, within: Duration) -> Result<Exited, String> {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                return Err(self.stderr().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The readers finish once the pipes close, which they do with the
        // process unless something it started still holds them.
        let drained = std::time::Instant::now() + Duration::from_secs(5);
        while !self.output.closed() && std::time::Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Exited {
            status,
            stderr: self.stderr().join("\n"),
            stdout: self.stdout().join("\n"),
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if self.own_tail && std::thread::panicking() {
            self.tail.print(&self.tag);
        }
    }
}
