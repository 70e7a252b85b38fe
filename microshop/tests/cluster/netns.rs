//! A small network of Linux network namespaces for the fault suite
//! (`microshop/tests/faults/`): every service a host of its own, all on one bridge, and
//! silent partitions between any two hosts.
//!
//! The layout, all of it in namespaces this module creates (the host's own
//! interfaces, routes and tables are never touched):
//!
//! - a "switch" namespace holding a bridge `br0`;
//! - per host a namespace with `lo` and `eth0`, the end of a veth pair
//!   whose other end is a port of the bridge; addresses `10.77.0.N/24`;
//! - in the switch, an nftables table of the bridge family whose forward
//!   chain drops, and counts, every IPv4 packet between the address pairs
//!   of a set. A cut adds a pair (both directions) to the set, a heal
//!   removes it.
//!
//! Why nftables in the switch, and not a link taken down: a link taken
//! down on the host's own side drops its routes, so new connections fail
//! at once with ENETUNREACH; a bridge port taken down or detached cuts the
//! host off from everyone, and its neighbours' ARP entries then fail, so
//! connects end early with EHOSTUNREACH. Dropping IPv4 in the bridge's
//! forward path leaves links, routes and ARP untouched: packets simply
//! vanish, no RST and no ICMP comes back, a connect or an in-flight call
//! hangs until its own timeout, and a TCP connection survives the cut
//! (both ends keep their state) and carries on after the heal. It also
//! cuts one pair (orchestrator ↔ MongoDB) while both keep every other
//! link. `faults/partitions.rs` proves the silence with a test of its own.
//!
//! The test process joins the network too: [`Net::enter`] moves the
//! calling thread into a host's namespace, and every thread it starts
//! afterwards (a tokio runtime built then, the harness's reader threads)
//! is born there, so the test's clients reach the services over the
//! bridge, from a host that can itself be cut off. Services run under
//! [`Host::prefix`] (`ip netns exec NS`), which execs the program, so the
//! harness's pids, signals and pipes are the program's own.
//!
//! Cleanup: dropping the [`Net`] moves the thread back, heals, and deletes
//! every namespace it made (a veth pair goes with its namespace). Names
//! carry the test process's pid, so a net left behind by a killed test
//! run is deleted by the next one that starts.

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

/// Namespace names of this module start with it.
const PREFIX: &str = "msf-";
/// The nftables table in the switch namespace.
const TABLE: &str = "microshop_faults";
/// `ip`, where Debian puts it (also looked for on `PATH`).
const IP: &str = "/usr/sbin/ip";

/// A host of a [`Net`]: a namespace with one address on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name in the net (`orchestrator`, `mongodb`, ...).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Host {
    /// The command prefix that runs a program in this host's namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec![ip_command(), "netns".into(), "exec".into(), self.ns.clone()]
    }

    /// `ip:port` on this host.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

/// What the suite needs of the machine: root, `ip` and `nft`. `None` when
/// all are there, else what is missing.
pub fn missing_tools() -> Option<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)");
    }
    if !runs(&ip_command(), &["-V"]) {
        missing.push("ip (iproute2)");
    }
    if !runs("nft", &["--version"]) {
        missing.push("nft (apt-get install nftables)");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn is_root() -> bool {
    // The effective uid, without libc: the `Uid:` line of /proc/self/status
    // is "real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn ip_command() -> String {
    if std::path::Path::new(IP).exists() {
        IP.to_owned()
    } else {
        "ip".to_owned()
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `program args`, feeding it `stdin`; panics with its stderr if it
/// fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("write to the child's stdin");
    }
    let out = child.wait_with_output().expect("wait for the child");
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread inside `host`'s namespace and returns what
/// it returns: a socket it makes (a listener, say) is `host`'s and may be
/// used from any thread afterwards.
pub fn within<T: Send + 'static>(host: &Host, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", host.ns);
    std::thread::spawn(move || {
        use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
        let target = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network))
            .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
        f()
    })
    .join()
    .expect("the thread in the namespace")
}

fn ip(args: &[&str]) -> String {
    run(&ip_command(), args, None)
}

/// Deletes the namespaces of nets whose test process is gone.
fn delete_stale() {
    let listed = ip(&["netns", "list"]);
    for line in listed.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting namespace {name}, left behind by test process {pid}");
            let _ = Command::new(ip_command())
                .args(["netns", "del", name])
                .status();
        }
    }
}

/// A network of namespaces; see the module docs. Dropping it removes it.
pub struct Net {
    /// `msf-<pid>-<n>`: the start of every namespace name.
    id: String,
    switch: String,
    hosts: Vec<Host>,
    /// The pairs cut now, each once (lower address first).
    cuts: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Cuts made so far.
    cuts_made: usize,
    /// The namespace the entering thread came from, and that thread.
    home: Option<(File, std::thread::ThreadId)>,
}

impl Net {
    /// A switch namespace with its bridge and an empty cut set. Check
    /// [`missing_tools`] first.
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        delete_stale();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{id}-switch");
        let net = Self {
            id,
            switch: switch.clone(),
            hosts: Vec::new(),
            cuts: Vec::new(),
            cuts_made: 0,
            home: None,
        };
        // Kept in `net` before anything else is made, so a failure below
        // still deletes what exists.
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        net.nft(&format!(
            "table bridge {TABLE} {{\n\
             \tset cut {{ type ipv4_addr . ipv4_addr; }}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tip saddr . ip daddr @cut counter drop\n\
             \t}}\n\
             }}\n"
        ));
        net
    }

    /// Runs an nftables script in the switch namespace.
    fn nft(&self, script: &str) -> String {
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), self.switch.clone()];
        args.extend(["nft".into(), "-f".into(), "-".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&ip_command(), &args, Some(script))
    }

    /// A new host `name` (at most 11 characters) on the bridge.
    pub fn host(&mut self, name: &str) -> Host {
        assert!(
            name.len() <= 11 && !self.hosts.iter().any(|h| h.name == name),
            "host name {name:?}: unique, at most 11 characters (interface names are short)"
        );
        let n = u8::try_from(self.hosts.len() + 2).expect("fewer than 250 hosts");
        let host = Host {
            name: name.to_owned(),
            ns: format!("{}-{name}", self.id),
            ip: Ipv4Addr::new(10, 77, 0, n),
        };
        ip(&["netns", "add", &host.ns]);
        self.hosts.push(host.clone());
        let port = format!("v-{name}");
        // Made in the host's namespace, its far end moved into the switch:
        // nothing is ever created in the namespace the test started in.
        ip(&[
            "-n", &host.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
        ]);
        ip(&["-n", &host.ns, "link", "set", &port, "netns", &self.switch]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        let cidr = format!("{}/24", host.ip);
        ip(&["-n", &host.ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        host
    }

    /// Moves the calling thread into `host`'s namespace: the sockets it
    /// makes from now on, and every thread it starts, are that host's.
    /// Call it before building the test's runtime. [`Drop`] moves the
    /// thread back.
    pub fn enter(&mut self, host: &Host) {
        use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
        assert!(self.home.is_none(), "the thread entered the net already");
        let home = File::open("/proc/thread-self/ns/net").expect("open this thread's namespace");
        let target =
            File::open(format!("/run/netns/{}", host.ns)).expect("open the host's namespace");
        move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network))
            .unwrap_or_else(|e| panic!("cannot enter namespace {}: {e}", host.ns));
        self.home = Some((home, std::thread::current().id()));
    }

    fn pair(a: &Host, b: &Host) -> (Ipv4Addr, Ipv4Addr) {
        assert_ne!(a, b, "a host is never cut from itself");
        if a.ip < b.ip {
            (a.ip, b.ip)
        } else {
            (b.ip, a.ip)
        }
    }

    fn elements((x, y): (Ipv4Addr, Ipv4Addr)) -> String {
        format!("{{ {x} . {y}, {y} . {x} }}")
    }

    /// Silently drops every packet between `a` and `b`, both ways, until
    /// [`Net::heal`].
    pub fn cut(&mut self, a: &Host, b: &Host) {
        let pair = Self::pair(a, b);
        if self.cuts.contains(&pair) {
            return;
        }
        self.nft(&format!(
            "add element bridge {TABLE} cut {}\n",
            Self::elements(pair)
        ));
        self.cuts.push(pair);
        self.cuts_made += 1;
    }

    /// Lets packets between `a` and `b` through again.
    pub fn heal(&mut self, a: &Host, b: &Host) {
        let pair = Self::pair(a, b);
        if let Some(i) = self.cuts.iter().position(|p| *p == pair) {
            self.nft(&format!(
                "delete element bridge {TABLE} cut {}\n",
                Self::elements(pair)
            ));
            self.cuts.remove(i);
        }
    }

    /// Cuts made so far (each pair once per cut).
    pub fn cuts_made(&self) -> usize {
        self.cuts_made
    }

    /// Packets the cuts dropped so far.
    pub fn dropped(&self) -> u64 {
        let args = [
            "netns",
            "exec",
            &self.switch,
            "nft",
            "list",
            "chain",
            "bridge",
            TABLE,
            "forward",
        ];
        let listed = run(&ip_command(), &args, None);
        listed
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some((home, thread)) = self.home.take()
            && thread == std::thread::current().id()
        {
            use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
            let _ = move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network));
        }
        // Deleting a namespace takes its end of every veth pair, and with
        // it the other end; processes still in one keep it alive until
        // they exit, but its name goes now.
        for host in &self.hosts {
            let _ = Command::new(ip_command())
                .args(["netns", "del", &host.ns])
                .status();
        }
        let _ = Command::new(ip_command())
            .args(["netns", "del", &self.switch])
            .status();
    }
}
