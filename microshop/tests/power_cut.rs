//! Power-cut tests. A SIGKILL loses nothing the OS holds, so the crash
//! matrix (`crash/`) cannot show that an answer was fsync'd before it
//! was given; here the services' data directories are on a FUSE
//! filesystem that forgets, at a cut, everything not made durable
//! (`power_cut/fs.rs`), and the mesh runs on it (`power_cut/rig.rs`).
//!
//! The matrix cuts at every failpoint boundary of the checkout, its
//! compensation, confirm and cancel, then at random moments of bursts of
//! concurrent checkouts. After each cut: what the participants had
//! acknowledged is there before the orchestrator recovers; after recovery
//! the invariants hold, each saga's effects are there once, and every
//! outcome told to a client is still what GetSaga and a retry answer.

mod cluster;
#[path = "power_cut/fs.rs"]
mod fs;
#[path = "power_cut/rig.rs"]
mod rig;

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::Path,
    time::Duration,
};

use cluster::{Svc, shop::*};
use fs::PowerCutFs;
use microshop::mesh::MeshClients;
use microshop_proto::{
    inventory::v1 as inv, loyalty::v1 as loy, orchestrator::v1 as orch, order::v1 as ord,
};
use microshop_runtime::Reason;
use rig::{Call, FAILPOINT_WITHIN, Outcome, Rig, Told, outcome_of};
use tokio::time::timeout;
use tonic::Code;

/// Whether this machine can mount the filesystem (root and /dev/fuse).
/// Without it the tests are skipped, except under CI, where they fail.
fn can_mount() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why =
        format!("the power-cut tests need root and /dev/fuse (root: {root}, /dev/fuse: {fuse})");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{why}");
    eprintln!("skipped: {why}");
    false
}

fn read(path: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path).ok()?.read_to_end(&mut out).ok()?;
    Some(out)
}

/// The filesystem's own model, against POSIX: what was synced survives a
/// cut, what was not is gone.
#[test]
fn filesystem_drops_what_was_not_synced() {
    if !can_mount() {
        return;
    }
    let mnt = tempfile::tempdir().expect("mount point");
    let mut pfs = PowerCutFs::mount(mnt.path()).expect("mount the power-cut filesystem");
    let root = mnt.path();
    let dir = root.join("d");
    std::fs::create_dir(&dir).unwrap();
    let synced = dir.join("synced");
    let unsynced = dir.join("unsynced");
    let orphan = dir.join("orphan");
    // A file written and fsync'd, its directory fsync'd: durable.
    let mut f = File::create(&synced).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    // A file whose name is durable but whose write is not.
    let mut g = File::create(&unsynced).unwrap();
    g.write_all(b"first").unwrap();
    g.sync_data().unwrap();
    File::open(&dir).unwrap().sync_all().unwrap();
    File::open(root).unwrap().sync_all().unwrap();
    g.write_all(b" and lost").unwrap();
    // A later write to the synced file, then a truncate: both lost.
    f.write_all(b" plus lost").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&synced)
        .unwrap()
        .set_len(3)
        .unwrap();
    // A file created, written and fsync'd, but its directory not: gone.
    let mut h = File::create(&orphan).unwrap();
    h.write_all(b"nameless").unwrap();
    h.sync_all().unwrap();
    // A rename whose directory is not fsync'd: undone. An unlink too.
    std::fs::rename(&synced, dir.join("renamed")).unwrap();
    std::fs::remove_file(&unsynced).unwrap();
    // A new directory with a synced file, the parent not synced: gone.
    std::fs::create_dir(root.join("newdir")).unwrap();
    let mut k = File::create(root.join("newdir/file")).unwrap();
    k.write_all(b"x").unwrap();
    k.sync_all().unwrap();
    File::open(root.join("newdir")).unwrap().sync_all().unwrap();
    drop((f, g, h, k));

    let dropped = pfs.cut().expect("cut");
    assert_eq!(read(&synced).as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&unsynced).as_deref(), Some(&b"first"[..]));
    assert!(
        !orphan.exists(),
        "a file whose directory was not synced survived"
    );
    assert!(!dir.join("renamed").exists(), "an unsynced rename survived");
    assert!(!root.join("newdir").exists(), "an unsynced mkdir survived");
    assert!(dropped.files_rolled_back >= 2, "{dropped:?}");

    // After the cut it works as before: sync a rename and it stays.
    std::fs::rename(&synced, dir.join("renamed")).unwrap();
    File::open(&dir).unwrap().sync_all().unwrap();
    let mut u = OpenOptions::new().append(true).open(&unsynced).unwrap();
    u.write_all(b" kept").unwrap();
    u.sync_data().unwrap();
    drop(u);
    pfs.cut().expect("second cut");
    assert!(!synced.exists());
    assert_eq!(read(&dir.join("renamed")).as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&unsynced).as_deref(), Some(&b"first kept"[..]));
}

// ---------------------------------------------------------------------------
// The crash-point matrix
// ---------------------------------------------------------------------------

const PHASES: [&str; 3] = ["intent", "rpc", "result"];

/// A saga type under test, and its operations in call order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A checkout that completes.
    Place,
    /// A checkout rejected at create-order (its coupon is spent), then
    /// compensated.
    Rejected,
    Confirm,
    Cancel,
}

impl Kind {
    fn ops(self) -> &'static [&'static str] {
        match self {
            Self::Place => &["quote", "reserve-stock", "deduct-points", "create-order"],
            Self::Rejected => &[
                "quote",
                "reserve-stock",
                "deduct-points",
                "create-order",
                "cancel-order",
                "refund-points",
                "release-stock",
            ],
            Self::Confirm => &["load-order", "mark-paid", "commit-stock", "earn-points"],
            Self::Cancel => &[
                "load-order",
                "cancel-order",
                "release-stock",
                "refund-points",
            ],
        }
    }

    /// The operations cut at (a rejected checkout's first three are a
    /// completing one's).
    fn cut_ops(self) -> std::ops::Range<usize> {
        match self {
            Self::Rejected => 3..7,
            _ => 0..4,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::Rejected => "rejected",
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
        }
    }

    fn ends(self) -> Outcome {
        match self {
            Self::Rejected => Outcome::Refused {
                code: Code::FailedPrecondition,
                reason: Some(Reason::CouponExhausted),
            },
            _ => Outcome::Done {
                saga_id: String::new(),
                state: orch::SagaState::Completed as i32,
                order_id: String::new(),
            },
        }
    }
}

/// What the participants show of one saga's effects, relative to before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Effects {
    reserved: i64,
    sold: i64,
    deducted: i64,
    refunded: i64,
    earned: bool,
    orders: usize,
    status: Option<i32>,
}

impl Effects {
    /// What operation `op` of a `kind` saga adds once acknowledged.
    fn apply(&mut self, kind: Kind, op: &str) {
        match op {
            "reserve-stock" => self.reserved += 1,
            "release-stock" => self.reserved -= 1,
            "commit-stock" => {
                self.reserved -= 1;
                self.sold += 1;
            }
            "deduct-points" => self.deducted += REDEEM,
            "refund-points" => self.refunded += REDEEM,
            "earn-points" => self.earned = true,
            "create-order" if kind == Kind::Place => self.orders = 1,
            "mark-paid" => self.status = Some(ord::OrderStatus::Paid as i32),
            "cancel-order" if kind == Kind::Cancel => {
                self.status = Some(ord::OrderStatus::Cancelled as i32);
            }
            _ => {}
        }
    }
}

/// One saga to cut, and the state it starts from.
struct Subject {
    kind: Kind,
    who: String,
    call: Call,
    order_id: String,
    sku: String,
    product: inv::GetProductResponse,
    balance: loy::GetBalanceResponse,
    status: Option<i32>,
}

impl Subject {
    async fn new(rig: &mut Rig, kind: Kind, fx: &Fixture, who: &str) -> Self {
        let c = rig.c();
        grant(&c, &mut rig.u, who).await;
        let code = match kind {
            Kind::Place => "",
            Kind::Rejected => &fx.spent,
            Kind::Confirm | Kind::Cancel => &fx.open,
        };
        let req = place(who, who, &fx.sku, code, REDEEM);
        let (order_id, call) = match kind {
            Kind::Place | Kind::Rejected => (String::new(), Call::Place(req)),
            Kind::Confirm | Kind::Cancel => {
                let placed = rig
                    .call(Call::Place(req), &format!("placing for {who}"))
                    .await;
                let Some(Outcome::Done { order_id, .. }) = placed else {
                    panic!("{who}: the checkout before the cut failed: {placed:?}");
                };
                let call = if kind == Kind::Confirm {
                    Call::Confirm {
                        order_id: order_id.clone(),
                    }
                } else {
                    Call::Cancel {
                        order_id: order_id.clone(),
                    }
                };
                (order_id, call)
            }
        };
        let status = if order_id.is_empty() {
            None
        } else {
            Some(order(&c, &order_id).await.status)
        };
        Self {
            kind,
            who: who.to_owned(),
            call,
            order_id,
            sku: fx.sku.clone(),
            product: product(&c, &fx.sku).await,
            balance: balance(&c, who).await,
            status,
        }
    }

    /// The effects expected once the first `n` operations were
    /// acknowledged.
    fn expected(&self, n: usize) -> Effects {
        let mut e = Effects {
            status: self.status,
            ..Effects::default()
        };
        for op in &self.kind.ops()[..n] {
            e.apply(self.kind, op);
        }
        e
    }

    /// The effects the participants show now.
    async fn effects(&self, c: &MeshClients) -> Effects {
        let p = product(c, &self.sku).await;
        let b = balance(c, &self.who).await;
        let status = if self.order_id.is_empty() {
            None
        } else {
            Some(order(c, &self.order_id).await.status)
        };
        let orders = if self.kind == Kind::Place {
            orders_of(c, &self.who).await.len()
        } else {
            0
        };
        Effects {
            reserved: p.reserved - self.product.reserved,
            sold: p.sold - self.product.sold,
            deducted: b.deducted - self.balance.deducted,
            refunded: b.refunded - self.balance.refunded,
            earned: b.earned > self.balance.earned,
            orders,
            status,
        }
    }
}

/// What the matrix works over: a SKU, a coupon with uses to spare and one
/// whose only use is spent.
struct Fixture {
    sku: String,
    open: String,
    spent: String,
}

async fn fixture(rig: &mut Rig) -> Fixture {
    let c = rig.c();
    let fx = Fixture {
        sku: "POWER-SKU".into(),
        open: "POWER-OPEN".into(),
        spent: "POWER-SPENT".into(),
    };
    put_product(&c, &mut rig.u, &fx.sku, 100_000).await;
    put_coupon(&c, &mut rig.u, &fx.open, 100_000).await;
    put_coupon(&c, &mut rig.u, &fx.spent, 1).await;
    rig.u.customers.insert("power-seed".into());
    let seed = place("power-seed", "power-seed", &fx.sku, &fx.spent, 0);
    let told = rig.call(Call::Place(seed), "the seed checkout").await;
    assert!(
        matches!(told, Some(Outcome::Done { .. })),
        "the seed checkout: {told:?}"
    );
    fx
}

/// One cut: the saga of `s` held at `point`, the power cut, the
/// participants' acknowledged effects checked before the orchestrator
/// comes back, then recovery, the client's retry, the effects exactly
/// once, the invariants and every outcome told so far.
async fn cut_case(rig: &mut Rig, s: &Subject, index: usize, phase: &str) {
    let op = s.kind.ops()[index];
    let point = format!("{phase}:{op}");
    let what = format!("{} cut at {point}", s.kind.tag());
    rig.cluster
        .restart(Svc::Orchestrator, &["--failpoint", &point])
        .await;
    let pending = tokio::spawn(s.call.clone().send(rig.c()));
    rig.cluster
        .wait_line(
            Svc::Orchestrator,
            &format!("FAILPOINT {point} reached"),
            FAILPOINT_WITHIN,
        )
        .await;
    rig.cut(&what);
    match timeout(Duration::from_secs(10), pending).await {
        Ok(Ok(result)) => {
            if let Some(outcome) = outcome_of(result) {
                rig.violation(format!("{what}: the held call was answered {outcome:?}"));
            }
        }
        Ok(Err(e)) => panic!("{what}: the call task failed: {e}"),
        Err(_) => panic!("{what}: the call did not end after the cut"),
    }

    // What the participants acknowledged before the cut is there.
    rig.start_participants().await;
    let acked = if phase == "intent" { index } else { index + 1 };
    let want = s.expected(acked);
    let got = s.effects(&rig.c()).await;
    if got != want {
        rig.violation(format!(
            "{what}: the participants acknowledged {:?}; after the cut they show {got:?}, \
             not {want:?}",
            &s.kind.ops()[..acked]
        ));
    }

    // Recovery ends the saga; the client, told nothing, retries.
    rig.cluster.start_svc(Svc::Orchestrator, &[]).await;
    rig.settle(&what).await;
    let told = rig
        .call(s.call.clone(), &format!("the retry after {what}"))
        .await;
    let ended = match (&told, s.kind.ends()) {
        (Some(Outcome::Done { state, .. }), Outcome::Done { state: want, .. }) => *state == want,
        (Some(t), want) => *t == want,
        (None, _) => false,
    };
    if !ended {
        rig.violation(format!("{what}: the retry answered {told:?}"));
    }
    let want = s.expected(s.kind.ops().len());
    let got = s.effects(&rig.c()).await;
    if got != want {
        rig.violation(format!(
            "{what}: after recovery the participants show {got:?}, not {want:?}"
        ));
    }
    rig.check(&what).await;
}

// ---------------------------------------------------------------------------
// Random cuts in a burst of concurrent checkouts
// ---------------------------------------------------------------------------

/// SplitMix64: a seeded generator of our own (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checkouts of one burst.
const BURST: usize = 16;

/// A burst of concurrent checkouts, cut once `k` of them (drawn) were
/// answered; then restart, recovery, the unanswered retried, the checks.
async fn burst_cut(rig: &mut Rig, fx: &Fixture, round: usize, rng: &mut Rng) {
    let c = rig.c();
    let mut calls = Vec::new();
    for j in 0..BURST {
        let who = format!("burst-{round}-{j}");
        grant(&c, &mut rig.u, &who).await;
        let (code, points) = match rng.below(4) {
            0 => (fx.spent.as_str(), 0),
            1 => (fx.open.as_str(), REDEEM),
            2 => ("", REDEEM),
            _ => ("", 0),
        };
        calls.push(Call::Place(place(&who, &who, &fx.sku, code, points)));
    }
    let k = 1 + rng.below(BURST as u64 - 2) as usize;
    let what = format!("burst {round} cut after {k} answers");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for call in &calls {
        let (call, c, tx) = (call.clone(), c.clone(), tx.clone());
        tokio::spawn(async move {
            let result = call.clone().send(c).await;
            let _ = tx.send((call, result));
        });
    }
    drop(tx);
    let mut answers = Vec::new();
    while answers.len() < k {
        let got = timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"));
        answers.push(got.expect("the callers are running"));
    }
    rig.cut(&what);
    while let Some(got) = timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: a call did not end after the cut"))
    {
        answers.push(got);
    }
    let mut unanswered = Vec::new();
    for (call, result) in answers {
        match outcome_of(result) {
            Some(outcome) => rig.told.push(Told {
                call,
                outcome,
                when: what.clone(),
            }),
            None => unanswered.push(call),
        }
    }
    eprintln!(
        "{what}: {} told before the cut, {} not",
        BURST - unanswered.len(),
        unanswered.len()
    );
    for svc in Svc::START_ORDER {
        rig.cluster.start_svc(svc, &[]).await;
    }
    rig.settle(&what).await;
    for call in unanswered {
        let key = call.key();
        if rig
            .call(call, &format!("the retry after {what}"))
            .await
            .is_none()
        {
            rig.violation(format!("{what}: the retry of {key} told no outcome"));
        }
    }
    rig.check(&what).await;
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// A store created, written and answered, then a cut before anything else
/// synced its directories: what it answered must still be there. The data
/// directory and the store's own directory are new entries of their
/// parents, durable only once those parents are fsync'd (POSIX), which
/// neither the services nor fjall do when they create them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_data_directories_survive_a_power_cut() {
    if !can_mount() {
        return;
    }
    let mut rig = Rig::start(false).await;
    let c = rig.c();
    put_product(&c, &mut rig.u, "FRESH-SKU", 10).await;
    grant(&c, &mut rig.u, "fresh-customer").await;
    rig.u.customers.insert("fresh-customer".into());
    let told = rig
        .call(
            Call::Place(place("fresh-1", "fresh-customer", "FRESH-SKU", "", 0)),
            "the first checkout",
        )
        .await;
    assert!(matches!(told, Some(Outcome::Done { .. })), "{told:?}");
    rig.cut("after the first answers of new stores");
    for svc in Svc::START_ORDER {
        rig.cluster.start_svc(svc, &[]).await;
    }
    rig.settle("the cut after the first answers").await;
    rig.check("the cut after the first answers").await;
    assert!(
        rig.violations.is_empty(),
        "answers of new stores were lost at a power cut:\n{}",
        rig.violations.join("\n")
    );
}

/// The negative control: on a disk that ignores fsync, the same checks
/// must find an answered checkout lost at a cut (else they could not see
/// a durability bug).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checks_see_answers_lost_by_a_disk_that_ignores_fsync() {
    if !can_mount() {
        return;
    }
    let mut rig = Rig::start(true).await;
    let fx = fixture(&mut rig).await;
    rig.pfs.sync_all().expect("sync the setup");
    rig.pfs.ignore_syncs();
    let c = rig.c();
    grant(&c, &mut rig.u, "lied-to").await;
    let told = rig
        .call(
            Call::Place(place("lied-to", "lied-to", &fx.sku, "", REDEEM)),
            "a checkout on a lying disk",
        )
        .await;
    assert!(matches!(told, Some(Outcome::Done { .. })), "{told:?}");
    rig.cut("on a disk that ignored fsync");
    for svc in Svc::START_ORDER {
        rig.cluster.start_svc(svc, &[]).await;
    }
    rig.settle("the cut on a lying disk").await;
    rig.check("the cut on a lying disk").await;
    assert!(
        rig.violations.iter().any(|v| v.contains("lied-to")),
        "the checkout answered on a disk that ignored fsync survived the cut: the checks \
         cannot see a lost answer"
    );
}

/// The power-cut matrix: one cut at every boundary of the checkout (and of
/// its compensation), confirm and cancel sagas, then random cuts in bursts
/// of concurrent checkouts. Prints one summary line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cut_matrix() {
    if !can_mount() {
        return;
    }
    let started = std::time::Instant::now();
    let mut rig = Rig::start(true).await;
    let fx = fixture(&mut rig).await;

    // A cut right after the setup: the stores' creation, the catalog and
    // the first order were all answered.
    rig.cut("after the setup");
    for svc in Svc::START_ORDER {
        rig.cluster.start_svc(svc, &[]).await;
    }
    rig.settle("the cut after the setup").await;
    rig.check("the cut after the setup").await;

    for kind in [Kind::Place, Kind::Rejected, Kind::Confirm, Kind::Cancel] {
        for index in kind.cut_ops() {
            for phase in PHASES {
                let who = format!("{}-{phase}-{}", kind.tag(), kind.ops()[index]);
                let s = Subject::new(&mut rig, kind, &fx, &who).await;
                cut_case(&mut rig, &s, index, phase).await;
                eprintln!("{who}: done at {:?}", started.elapsed());
            }
        }
    }

    let seed = std::env::var("POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("burst cuts: seed {seed} (POWER_CUT_SEED={seed} repeats them)");
    let mut rng = Rng(seed);
    for round in 0..3 {
        burst_cut(&mut rig, &fx, round, &mut rng).await;
    }

    let summary = format!(
        "power-cut matrix: {} cuts, {} invariant checks, {} violations",
        rig.cuts,
        rig.checks,
        rig.violations.len()
    );
    let _ = writeln!(std::io::stderr().lock(), "{summary}");
    eprintln!("power-cut matrix in {:?}", started.elapsed());
    assert!(
        rig.violations.is_empty(),
        "{summary}:\n{}",
        rig.violations.join("\n")
    );
}
