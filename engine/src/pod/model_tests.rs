//! Model-based tests of the pod state machine.
//!
//! An `Actor` plays one rkt process: it holds typed pods in its hand and applies
//! random operations to them, or loads pods by UUID from a list shared by all
//! actors. Every observation it makes is checked for legality on the spot (a pod's
//! path matches its state, a pod never moves backwards or comes back once gone,
//! errors are only the ones a lost race may produce).
//!
//! - `pod_model_single_thread`: one actor, each step checked against a reference
//!   model of where every pod is and who holds its lock.
//! - `pod_model_concurrent`: four actors on one `PodsDir`, racing for the same pods;
//!   afterwards every pod is in exactly one state directory or was destroyed exactly
//!   once, `list()` matches the directories, and no temp file is left.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Mutex;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embryo,
    Preparing,
    Prepared,
    Running,
    Exited,
    Garbage,
}

#[derive(Debug)]
enum Held {
    Embryo(Pod<Embryo>),
    Preparing(Pod<Preparing>),
    Prepared(Pod<Prepared>),
    Running(Pod<Running>),
    Exited(Pod<Exited>),
    Garbage(Pod<Garbage>),
}

impl Held {
    fn summary(&self) -> (Uuid, Kind, bool) {
        match self {
            Held::Embryo(p) => (p.uuid, Kind::Embryo, p.locked),
            Held::Preparing(p) => (p.uuid, Kind::Preparing, p.locked),
            Held::Prepared(p) => (p.uuid, Kind::Prepared, p.locked),
            Held::Running(p) => (p.uuid, Kind::Running, p.locked),
            Held::Exited(p) => (p.uuid, Kind::Exited, p.locked),
            Held::Garbage(p) => (p.uuid, Kind::Garbage, p.locked),
        }
    }
}

/// A transition of a held pod, named after the method it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Prepare,
    MarkPrepared,
    RunPreparing,
    Abort,
    RunPrepared,
    Expire,
    /// Drop a `Pod<Running>`: the pod's process is gone.
    Exit,
    /// `Pod<Running>::exited`, kept in hand (still locked).
    ExitKeep,
    MarkGarbage,
    Destroy,
}

impl Transition {
    const ALL: [Transition; 10] = [
        Transition::Prepare,
        Transition::MarkPrepared,
        Transition::RunPreparing,
        Transition::Abort,
        Transition::RunPrepared,
        Transition::Expire,
        Transition::Exit,
        Transition::ExitKeep,
        Transition::MarkGarbage,
        Transition::Destroy,
    ];

    /// The kind of held pod it applies to.
    fn from(self) -> Kind {
        match self {
            Transition::Prepare => Kind::Embryo,
            Transition::MarkPrepared | Transition::RunPreparing | Transition::Abort => Kind::Preparing,
            Transition::RunPrepared | Transition::Expire => Kind::Prepared,
            Transition::Exit | Transition::ExitKeep => Kind::Running,
            Transition::MarkGarbage => Kind::Exited,
            Transition::Destroy => Kind::Garbage,
        }
    }

    /// One of the transitions legal for `kind`, weighted toward the usual path.
    fn for_kind(kind: Kind, choice: usize) -> Transition {
        let options: &[Transition] = match kind {
            Kind::Embryo => &[Transition::Prepare],
            Kind::Preparing => &[
                Transition::MarkPrepared,
                Transition::MarkPrepared,
                Transition::RunPreparing,
                Transition::Abort,
            ],
            Kind::Prepared => &[
                Transition::RunPrepared,
                Transition::RunPrepared,
                Transition::Expire,
            ],
            Kind::Running => &[Transition::Exit, Transition::Exit, Transition::ExitKeep],
            Kind::Exited => &[Transition::MarkGarbage],
            Kind::Garbage => &[Transition::Destroy],
        };
        options[choice % options.len()]
    }
}

/// `Do` applies a transition to the `n`-th held pod of the kind it needs (modulo
/// how many there are; nothing if none). `Advance` takes the `n`-th held pod,
/// whatever it is, and applies one of its legal transitions, so most steps do
/// something. `Load`/`Info` pick the `n`-th UUID ever created (by any actor).
#[derive(Debug, Clone)]
enum Op {
    Create,
    Do(Transition, usize),
    Advance(usize, usize),
    /// Drop any held pod.
    Release(usize),
    Load(usize),
    Info(usize),
    List,
}

fn op() -> impl Strategy<Value = Op> {
    let n = || 0usize..64;
    prop_oneof![
        3 => Just(Op::Create),
        3 => (prop::sample::select(Transition::ALL.to_vec()), n()).prop_map(|(t, i)| Op::Do(t, i)),
        10 => (n(), n()).prop_map(|(i, c)| Op::Advance(i, c)),
        1 => n().prop_map(Op::Release),
        4 => n().prop_map(Op::Load),
        1 => n().prop_map(Op::Info),
        2 => Just(Op::List),
    ]
}

/// What `load` returned, by variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Embryo,
    Preparing,
    AbortedPrepare,
    Prepared,
    Running,
    Exited,
    Garbage,
    Deleting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Done,
    Busy,
    Moved,
    NotFound,
    Loaded(Seen),
    Info(PodState),
    Listed,
}

/// A directory rank: pods only ever move to a higher one; `GONE` once destroyed.
const GONE: u8 = 6;

struct Actor<'a> {
    pods: &'a PodsDir,
    known: &'a Mutex<Vec<Uuid>>,
    destroyed: &'a Mutex<HashMap<Uuid, u32>>,
    hand: Vec<Held>,
    last_seen: HashMap<Uuid, u8>,
}

impl<'a> Actor<'a> {
    fn new(pods: &'a PodsDir, known: &'a Mutex<Vec<Uuid>>, destroyed: &'a Mutex<HashMap<Uuid, u32>>) -> Self {
        Actor {
            pods,
            known,
            destroyed,
            hand: Vec::new(),
            last_seen: HashMap::new(),
        }
    }

    /// The hand slot an op acts on, and the transition it applies there.
    fn target(&self, op: &Op) -> Option<(usize, Transition)> {
        let kinds: Vec<Kind> = self.hand.iter().map(|h| h.summary().1).collect();
        target(&kinds, op)
    }

    fn pick_known(&self, n: usize) -> Option<Uuid> {
        let known = self.known.lock().unwrap();
        (!known.is_empty()).then(|| known[n % known.len()])
    }

    /// A pod never moves back to an earlier directory, nor returns once gone.
    fn saw(&mut self, uuid: Uuid, rank: u8) {
        if let Some(prev) = self.last_seen.insert(uuid, rank) {
            assert!(prev <= rank, "pod {uuid} went from rank {prev} back to {rank}");
        }
    }

    fn saw_info(&mut self, info: &PodInfo) {
        let dir = StateDir::of(info.state);
        assert_eq!(
            info.path,
            self.pods.pod_path(dir, &info.uuid),
            "path of a {} pod",
            info.state
        );
        self.saw(info.uuid, dir as u8);
    }

    /// A transition on a locked value cannot lose a race: every mover takes the lock.
    fn must<T>(&self, what: &str, result: Result<T, PodError>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!("{what} on a locked pod failed: {e}"),
        }
    }

    /// `run`/`expire` on a `Pod<Prepared>`: certain when it holds the lock, may lose
    /// a race (`Busy`/`Moved`) when it is the unlocked value `prepared()` returns.
    fn prepared_op<T>(pod: Pod<Prepared>, f: fn(Pod<Prepared>) -> Result<T, PodError>) -> Result<T, Outcome> {
        let locked = pod.locked;
        match f(pod) {
            Ok(v) => Ok(v),
            Err(PodError::Busy(_)) if !locked => Err(Outcome::Busy),
            Err(PodError::Moved { .. }) if !locked => Err(Outcome::Moved),
            Err(e) => panic!("prepared pod (locked: {locked}): {e}"),
        }
    }

    fn step(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::Create => {
                let pod = self.must("create", self.pods.create());
                self.known.lock().unwrap().push(pod.uuid());
                self.hand.push(Held::Embryo(pod));
                Outcome::Done
            }
            Op::Do(..) | Op::Advance(..) => match self.target(op) {
                Some((slot, t)) => {
                    let held = self.hand.remove(slot);
                    self.apply(held, t)
                }
                None => Outcome::Skipped,
            },
            Op::Release(n) => {
                if self.hand.is_empty() {
                    return Outcome::Skipped;
                }
                let i = n % self.hand.len();
                drop(self.hand.remove(i));
                Outcome::Done
            }
            Op::Load(n) => match self.pick_known(n) {
                Some(uuid) => self.load(uuid),
                None => Outcome::Skipped,
            },
            Op::Info(n) => match self.pick_known(n) {
                Some(uuid) => match self.pods.info(&uuid) {
                    Ok(info) => {
                        assert_eq!(info.uuid, uuid);
                        self.saw_info(&info);
                        Outcome::Info(info.state)
                    }
                    Err(PodError::NotFound(_)) => {
                        self.saw(uuid, GONE);
                        Outcome::NotFound
                    }
                    Err(e) => panic!("info {uuid}: {e}"),
                },
                None => Outcome::Skipped,
            },
            Op::List => {
                let list = self.pods.list().unwrap();
                for pair in list.windows(2) {
                    assert!(pair[0].uuid < pair[1].uuid, "sorted, no duplicates");
                }
                for info in &list {
                    self.saw_info(info);
                }
                Outcome::Listed
            }
        }
    }

    fn apply(&mut self, held: Held, t: Transition) -> Outcome {
        let next = match (held, t) {
            (Held::Embryo(p), Transition::Prepare) => Held::Preparing(self.must("prepare", p.prepare())),
            (Held::Preparing(p), Transition::MarkPrepared) => {
                let p = self.must("prepared", p.prepared());
                assert!(!p.locked, "prepared() releases the lock");
                Held::Prepared(p)
            }
            (Held::Preparing(p), Transition::RunPreparing) => Held::Running(self.must("run", p.run())),
            (Held::Preparing(p), Transition::Abort) => Held::Garbage(self.must("abort", p.abort())),
            (Held::Prepared(p), Transition::RunPrepared) => {
                match Self::prepared_op(p, Pod::<Prepared>::run) {
                    Ok(p) => Held::Running(p),
                    Err(lost) => return lost,
                }
            }
            (Held::Prepared(p), Transition::Expire) => match Self::prepared_op(p, Pod::<Prepared>::expire) {
                Ok(p) => Held::Garbage(p),
                Err(lost) => return lost,
            },
            (Held::Running(p), Transition::Exit) => {
                drop(p);
                return Outcome::Done;
            }
            (Held::Running(p), Transition::ExitKeep) => Held::Exited(p.exited()),
            (Held::Exited(p), Transition::MarkGarbage) => {
                Held::Garbage(self.must("mark garbage", p.mark_garbage()))
            }
            (Held::Garbage(p), Transition::Destroy) => {
                let uuid = p.uuid();
                self.must("destroy", p.destroy());
                *self.destroyed.lock().unwrap().entry(uuid).or_default() += 1;
                self.saw(uuid, GONE);
                return Outcome::Done;
            }
            (held, t) => panic!("test bug: {t:?} on {:?}", held.summary()),
        };
        self.hand.push(next);
        Outcome::Done
    }

    fn load(&mut self, uuid: Uuid) -> Outcome {
        let any = match self.pods.load(&uuid) {
            Ok(any) => any,
            Err(PodError::Busy(u)) => {
                assert_eq!(u, uuid);
                return Outcome::Busy;
            }
            Err(PodError::NotFound(_)) => {
                self.saw(uuid, GONE);
                return Outcome::NotFound;
            }
            Err(e) => panic!("load {uuid}: {e}"),
        };
        let info = any.info();
        assert_eq!(info.uuid, uuid);
        self.saw_info(&info);
        let (seen, expected_state) = match any {
            AnyPod::Embryo(_) => (Seen::Embryo, PodState::Embryo),
            AnyPod::Preparing(_) => (Seen::Preparing, PodState::Preparing),
            AnyPod::Running(_) => (Seen::Running, PodState::Running),
            AnyPod::Deleting(i) => {
                assert!(matches!(i.state, PodState::ExitedGarbage | PodState::Garbage));
                (Seen::Deleting, i.state)
            }
            AnyPod::AbortedPrepare(p) => {
                self.hand.push(Held::Preparing(p));
                (Seen::AbortedPrepare, PodState::AbortedPrepare)
            }
            AnyPod::Prepared(p) => {
                self.hand.push(Held::Prepared(p));
                (Seen::Prepared, PodState::Prepared)
            }
            AnyPod::Exited(p) => {
                self.hand.push(Held::Exited(p));
                (Seen::Exited, PodState::Exited)
            }
            AnyPod::Garbage(p) => {
                let state = p.info().state;
                assert!(matches!(state, PodState::ExitedGarbage | PodState::Garbage));
                self.hand.push(Held::Garbage(p));
                (Seen::Garbage, state)
            }
        };
        assert_eq!(info.state, expected_state, "{seen:?}");
        if !matches!(
            seen,
            Seen::Embryo | Seen::Preparing | Seen::Running | Seen::Deleting
        ) {
            let held = self.hand.last().map(Held::summary);
            assert_eq!(
                held.map(|h| (h.0, h.2)),
                Some((uuid, true)),
                "load returns typed pods locked"
            );
        }
        Outcome::Loaded(seen)
    }
}

/// Which hand slot `op` acts on and with which transition, given the held kinds.
fn target(kinds: &[Kind], op: &Op) -> Option<(usize, Transition)> {
    match *op {
        Op::Do(t, n) => {
            let slots: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == t.from()).collect();
            (!slots.is_empty()).then(|| (slots[n % slots.len()], t))
        }
        Op::Advance(n, choice) => (!kinds.is_empty()).then(|| {
            (
                n % kinds.len(),
                Transition::for_kind(kinds[n % kinds.len()], choice),
            )
        }),
        _ => None,
    }
}

/// Where each pod is and which held values have its lock, as the spec says.
#[derive(Default)]
struct Model {
    dirs: HashMap<Uuid, Option<StateDir>>,
    hand: Vec<(Uuid, Kind, bool)>,
    created: Vec<Uuid>,
}

impl Model {
    fn locked(&self, uuid: Uuid) -> bool {
        self.hand.iter().any(|&(u, _, l)| u == uuid && l)
    }

    fn dir(&self, uuid: Uuid) -> Option<StateDir> {
        self.dirs.get(&uuid).copied().flatten()
    }

    fn moved(&mut self, uuid: Uuid, to: StateDir, kind: Kind, locked: bool) -> Outcome {
        self.dirs.insert(uuid, Some(to));
        self.hand.push((uuid, kind, locked));
        Outcome::Done
    }

    /// `run`/`expire` of a prepared value: the lock first, then the rename.
    fn prepared(&mut self, uuid: Uuid, locked: bool, to: StateDir, kind: Kind) -> Outcome {
        if !locked && self.locked(uuid) {
            Outcome::Busy
        } else if self.dir(uuid) != Some(StateDir::Prepared) {
            Outcome::Moved
        } else {
            self.moved(uuid, to, kind, true)
        }
    }

    fn apply(&mut self, uuid: Uuid, locked: bool, t: Transition) -> Outcome {
        match t {
            Transition::Prepare => self.moved(uuid, StateDir::Prepare, Kind::Preparing, true),
            Transition::MarkPrepared => self.moved(uuid, StateDir::Prepared, Kind::Prepared, false),
            Transition::RunPreparing => self.moved(uuid, StateDir::Run, Kind::Running, true),
            Transition::Abort => self.moved(uuid, StateDir::Garbage, Kind::Garbage, true),
            Transition::RunPrepared => self.prepared(uuid, locked, StateDir::Run, Kind::Running),
            Transition::Expire => self.prepared(uuid, locked, StateDir::Garbage, Kind::Garbage),
            Transition::Exit => Outcome::Done,
            Transition::ExitKeep => {
                self.hand.push((uuid, Kind::Exited, locked));
                Outcome::Done
            }
            Transition::MarkGarbage => self.moved(uuid, StateDir::ExitedGarbage, Kind::Garbage, true),
            Transition::Destroy => {
                self.dirs.insert(uuid, None);
                Outcome::Done
            }
        }
    }

    /// The expected outcome of `op`, applied to the model. `created` is the UUID a
    /// `Create` produced (the model cannot guess it).
    fn step(&mut self, op: &Op, created: Option<Uuid>) -> Outcome {
        match *op {
            Op::Create => {
                let uuid = created.unwrap();
                self.created.push(uuid);
                self.moved(uuid, StateDir::Embryo, Kind::Embryo, true)
            }
            Op::Do(..) | Op::Advance(..) => {
                let kinds: Vec<Kind> = self.hand.iter().map(|h| h.1).collect();
                match target(&kinds, op) {
                    Some((slot, t)) => {
                        let (uuid, _, locked) = self.hand.remove(slot);
                        self.apply(uuid, locked, t)
                    }
                    None => Outcome::Skipped,
                }
            }
            Op::Release(n) => {
                if self.hand.is_empty() {
                    return Outcome::Skipped;
                }
                let i = n % self.hand.len();
                self.hand.remove(i);
                Outcome::Done
            }
            Op::Load(n) => {
                if self.created.is_empty() {
                    return Outcome::Skipped;
                }
                let uuid = self.created[n % self.created.len()];
                let Some(dir) = self.dir(uuid) else {
                    return Outcome::NotFound;
                };
                let locked = self.locked(uuid);
                let (seen, kind) = match (dir, locked) {
                    (StateDir::Embryo, _) => return Outcome::Loaded(Seen::Embryo),
                    (StateDir::Prepare, true) => return Outcome::Loaded(Seen::Preparing),
                    (StateDir::Prepared, true) => return Outcome::Busy,
                    (StateDir::Run, true) => return Outcome::Loaded(Seen::Running),
                    (StateDir::ExitedGarbage | StateDir::Garbage, true) => {
                        return Outcome::Loaded(Seen::Deleting);
                    }
                    (StateDir::Prepare, false) => (Seen::AbortedPrepare, Kind::Preparing),
                    (StateDir::Prepared, false) => (Seen::Prepared, Kind::Prepared),
                    (StateDir::Run, false) => (Seen::Exited, Kind::Exited),
                    (StateDir::ExitedGarbage | StateDir::Garbage, false) => (Seen::Garbage, Kind::Garbage),
                };
                self.hand.push((uuid, kind, true));
                Outcome::Loaded(seen)
            }
            Op::Info(n) => {
                if self.created.is_empty() {
                    return Outcome::Skipped;
                }
                let uuid = self.created[n % self.created.len()];
                match self.dir(uuid) {
                    Some(dir) => Outcome::Info(dir.observed(self.locked(uuid))),
                    None => Outcome::NotFound,
                }
            }
            Op::List => Outcome::Listed,
        }
    }

    fn expected_list(&self, pods: &PodsDir) -> Vec<PodInfo> {
        let mut list: Vec<PodInfo> = self
            .dirs
            .iter()
            .filter_map(|(&uuid, dir)| {
                let dir = (*dir)?;
                Some(pods.snapshot(dir, &uuid, dir.observed(self.locked(uuid))))
            })
            .collect();
        list.sort_by_key(|i| i.uuid);
        list
    }
}

/// tmpfs when there is one: the model tests are about races, not about fsync speed.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("pod-model").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn temp_files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            found.push(entry.path());
        }
        if entry.file_type().unwrap().is_dir() {
            temp_files_under(&entry.path(), found);
        }
    }
}

/// With no value held anywhere: every pod is in exactly one state directory or was
/// destroyed exactly once, nothing else is there, `list()` says the same, and no
/// temp file is left.
fn check_at_rest(pods: &PodsDir, known: &[Uuid], destroyed: &HashMap<Uuid, u32>) {
    let mut expected = Vec::new();
    for &uuid in known {
        let places: Vec<StateDir> = StateDir::ALL
            .into_iter()
            .filter(|&d| pods.pod_path(d, &uuid).symlink_metadata().is_ok())
            .collect();
        let times = destroyed.get(&uuid).copied().unwrap_or(0);
        match (places.as_slice(), times) {
            ([dir], 0) => expected.push(pods.snapshot(*dir, &uuid, dir.observed(false))),
            ([], 1) => {}
            _ => panic!("pod {uuid}: in {places:?}, destroyed {times} times"),
        }
    }
    for dir in StateDir::ALL {
        for entry in std::fs::read_dir(pods.state_dir(dir)).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(
                known.iter().any(|u| u.to_string() == name),
                "stray {name} in {}",
                dir.name()
            );
        }
    }
    expected.sort_by_key(|i| i.uuid);
    assert_eq!(pods.list().unwrap(), expected);
    let mut temps = Vec::new();
    temp_files_under(pods.root(), &mut temps);
    assert!(temps.is_empty(), "temp files left: {temps:?}");
}

fn run_single(ops: &[Op]) {
    let tmp = scratch();
    let pods = PodsDir::open(tmp.path()).unwrap();
    let known = Mutex::new(Vec::new());
    let destroyed = Mutex::new(HashMap::new());
    let mut actor = Actor::new(&pods, &known, &destroyed);
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let got = actor.step(op);
        let created = matches!(op, Op::Create).then(|| *known.lock().unwrap().last().unwrap());
        let want = model.step(op, created);
        assert_eq!(got, want, "step {i}: {op:?}");
        let hand: Vec<_> = actor.hand.iter().map(Held::summary).collect();
        assert_eq!(hand, model.hand, "hand after step {i}: {op:?}");
        assert_eq!(
            pods.list().unwrap(),
            model.expected_list(&pods),
            "list after step {i}: {op:?}"
        );
    }
    drop(actor);
    let known = known.into_inner().unwrap();
    check_at_rest(&pods, &known, &destroyed.into_inner().unwrap());
}

fn run_concurrent(scripts: &[Vec<Op>]) {
    let tmp = scratch();
    let pods = PodsDir::open(tmp.path()).unwrap();
    let known = Mutex::new(Vec::new());
    let destroyed = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for script in scripts {
            let (pods, known, destroyed) = (&pods, &known, &destroyed);
            s.spawn(move || {
                let mut actor = Actor::new(pods, known, destroyed);
                for op in script {
                    actor.step(op);
                }
            });
        }
    });
    let known = known.into_inner().unwrap();
    check_at_rest(&pods, &known, &destroyed.into_inner().unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pod_model_single_thread(ops in prop::collection::vec(op(), 1..100)) {
        run_single(&ops);
    }
}

proptest! {
    // Races make a failing case hard to replay, so shrinking is kept short.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pod_model_concurrent(scripts in prop::collection::vec(prop::collection::vec(op(), 1..50), 4)) {
        run_concurrent(&scripts);
    }
}

/// A fixed, heavier race: four threads hammer a few shared pods through their
/// whole life while listing, so lost races and moved-while-locking both happen.
#[test]
fn pod_model_concurrent_stress() {
    let script: Vec<Op> = (0..300)
        .map(|i| match i % 20 {
            0 | 10 => Op::Create,
            5 | 8 | 15 | 18 => Op::Load(i / 3),
            6 | 16 => Op::List,
            7 => Op::Info(i / 7),
            19 => Op::Release(i),
            _ => Op::Advance(i, i / 20),
        })
        .collect();
    run_concurrent(&[script.clone(), script.clone(), script.clone(), script]);
}

/// Pods keep moving (prepared -> run -> exited -> exited-garbage) while other
/// threads list and load them: `list` must never lose one, and a typed pod from
/// `load` must sit where it says, although it moved between lookup and lock.
#[test]
fn pod_list_and_load_follow_moving_pods() {
    let tmp = scratch();
    let pods = PodsDir::open(tmp.path()).unwrap();
    let uuids: Vec<Uuid> = (0..128)
        .map(|_| {
            pods.create()
                .unwrap()
                .prepare()
                .unwrap()
                .prepared()
                .unwrap()
                .uuid()
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    // Retries `load` until it yields what the mover needs; loaders and listers only
    // hold locks for a moment, so this ends quickly.
    fn load_until<T>(pods: &PodsDir, uuid: Uuid, mut f: impl FnMut(AnyPod) -> Option<T>) -> T {
        for _ in 0..100_000 {
            if let Ok(any) = pods.load(&uuid)
                && let Some(v) = f(any)
            {
                return v;
            }
            std::thread::yield_now();
        }
        panic!("pod {uuid} never became loadable")
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            for &uuid in &uuids {
                let prepared = load_until(&pods, uuid, |a| match a {
                    AnyPod::Prepared(p) => Some(p),
                    _ => None,
                });
                drop(prepared.run().unwrap());
                let exited = load_until(&pods, uuid, |a| match a {
                    AnyPod::Exited(p) => Some(p),
                    _ => None,
                });
                drop(exited.mark_garbage().unwrap());
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let listed: Vec<Uuid> = pods.list().unwrap().iter().map(|i| i.uuid).collect();
                let mut all = uuids.clone();
                all.sort();
                assert_eq!(listed, all, "list lost a pod that was moving");
            }
        });
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for uuid in &uuids {
                    // Snapshots may be stale by now; typed pods are held still, so
                    // check while `any` (and its lock) is alive.
                    let any = match pods.load(uuid) {
                        Ok(any) => any,
                        Err(PodError::Busy(_)) => continue,
                        Err(e) => panic!("load {uuid}: {e}"),
                    };
                    if matches!(any, AnyPod::Prepared(_) | AnyPod::Exited(_) | AnyPod::Garbage(_)) {
                        let info = any.info();
                        assert!(
                            info.path.is_dir(),
                            "{} pod not at {}",
                            info.state,
                            info.path.display()
                        );
                    }
                    drop(any);
                }
            }
        });
    });
    for uuid in &uuids {
        assert_eq!(pods.info(uuid).unwrap().state, PodState::ExitedGarbage);
    }
}
