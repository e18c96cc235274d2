//! Loads the embedded XDP object, attaches it to an interface and pins program, link and maps
//! under `<pin root>/<iface>` (default `/sys/fs/bpf/sshlb/<iface>`); detaches and unpins again.
//!
//! The pins are what keep the data plane alive without the agent: the link holds the program on
//! the interface, the maps hold the state. `down` is the only thing that removes them.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, PerCpuArray},
    pin::PinError,
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use sshlb_common::{map_names, Backend};

use crate::sys;

/// The XDP object built by `build.rs` from `sshlb-ebpf`, embedded so the agent is one file.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sshlb"));

/// Name of the XDP program inside the object.
pub const PROGRAM: &str = "sshlb";

/// Default directory under which each interface gets its own pin directory.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sshlb";

/// Name of the trivial XDP_PASS program inside the object (for veth peers, see [`attach_pass`]).
pub const PASS_PROGRAM: &str = "sshlb_pass";

/// Name of the benchmark baseline program (MAC swap + XDP_TX) inside the object.
pub const BASELINE_PROGRAM: &str = "sshlb_baseline";
/// Name of the benchmark's floor program: the baseline plus one connection-table lookup.
pub const FLOOR_PROGRAM: &str = "sshlb_floor";
/// Name of the benchmark's floor with the parser: `sshlb`'s parser, then the lookup.
pub const FLOOR_PARSED_PROGRAM: &str = "sshlb_floor_parsed";
/// Peer program of `cargo xtask bench dataplane`: the lookup floor plus an insert on a miss.
pub const FLOOR_INSERT_PROGRAM: &str = "sshlb_floor_insert";

/// Pin file names inside an interface's pin directory (maps are pinned under their own names).
const PIN_PROGRAM: &str = "prog";
const PIN_LINK: &str = "link";

/// Maps that are pinned (and adopted by name on restart).
const PINNED_MAPS: [&str; 17] = [
    map_names::SERVICES,
    map_names::BACKENDS,
    map_names::RINGS,
    map_names::FLOWS,
    map_names::NAT_REVERSE,
    map_names::CONFIG,
    map_names::STATS,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::ACL,
    map_names::LIMITS,
    map_names::LIMITER,
    map_names::SERVICE_FILTER,
    map_names::OWN_ADDRESSES,
    map_names::RESETS,
    map_names::OWN_FILTER,
    map_names::FLOW_EPOCH,
];

/// The program's `.rodata` switch to `bpf_ktime_get_coarse_ns` (`sshlb-ebpf`'s `clock.rs`).
const COARSE_CLOCK: &str = "COARSE_CLOCK";
/// The program's `.rodata` jiffies clock: ns per jiffy (0: off) and CLOCK_MONOTONIC at jiffy 0
/// ([`crate::clock`]).
const JIFFY_NS: &str = "JIFFY_NS";
const JIFFIES_BASE_NS: &str = "JIFFIES_BASE_NS";

/// Whether the running kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11). Unknown: no (the
/// precise clock works everywhere).
fn has_coarse_clock() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 11, 0))
}

/// Pinned maps a previous version may not have left (added since): adopting its pins creates
/// them, and their all-zero contents are safe until the agent writes them.
const ADDED_MAPS: [&str; 2] = [map_names::OWN_FILTER, map_names::FLOW_EPOCH];

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    /// Driver (native) XDP: runs before the kernel allocates an skb. Needs driver support.
    #[default]
    Native,
    /// Generic (skb) XDP: works on any interface, slower.
    Generic,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native (driver)",
            Self::Generic => "generic (skb)",
        })
    }
}

/// Everything that can go wrong loading, attaching, pinning or detaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The binary was built with `AYA_BUILD_SKIP=1` and carries no BPF object.
    #[error(
        "the BPF object is missing: this sshlb-agent was built with AYA_BUILD_SKIP=1; rebuild it \
         without that variable (the BPF build needs bpf-linker: run `cargo xtask setup`)"
    )]
    ObjectMissing,
    /// Not running as root.
    #[error("must run as root: loading and attaching XDP needs CAP_BPF and CAP_NET_ADMIN")]
    NotRoot,
    /// The named interface does not exist (in this network namespace).
    #[error("no such interface: {0:?}")]
    NoSuchInterface(String),
    /// Our pins for this interface already exist.
    #[error(
        "sshlb is already attached to {iface} (pinned at {}); run `sshlb-agent down {iface}` first",
        pin_dir.display()
    )]
    AlreadyAttached {
        /// Interface name.
        iface: String,
        /// Its pin directory.
        pin_dir: PathBuf,
    },
    /// Nothing pinned for this interface.
    #[error("sshlb is not attached to {iface}: nothing is pinned at {}", pin_dir.display())]
    NotAttached {
        /// Interface name.
        iface: String,
        /// Its pin directory.
        pin_dir: PathBuf,
    },
    /// The BPF filesystem could not be mounted.
    #[error("mounting the BPF filesystem at {} failed", path.display())]
    Bpffs {
        /// Mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Parsing the object or creating its maps failed.
    #[error("loading the BPF object failed")]
    Object(#[from] aya::EbpfError),
    /// The kernel (verifier) refused the program.
    #[error("the kernel refused to load the XDP program")]
    Load(#[source] ProgramError),
    /// Attaching failed; `hint` says what to try.
    #[error("attaching XDP in {mode} mode to {iface} failed{hint}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Requested mode.
        mode: AttachMode,
        /// Advice for the operator, with leading separator (may be empty).
        hint: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// The pinned maps were created by a binary with a different layout (or table size).
    #[error(
        "the pinned map {map} at {} has (key, value, entries) = {pinned:?} but this sshlb-agent \
         expects {ours:?}: it was created by another version or with another agent.max-flows. \
         Start the matching binary/configuration, or `sshlb-agent down` first (this drops \
         established flows)",
        pin_dir.display()
    )]
    LayoutMismatch {
        /// Map name.
        map: &'static str,
        /// What is pinned.
        pinned: (u32, u32, u32),
        /// What this binary needs.
        ours: (u32, u32, u32),
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// A pin could not be created.
    #[error("pinning {what} at {} failed", path.display())]
    Pin {
        /// What was pinned.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: PinError,
    },
    /// Opening a pinned object failed.
    #[error("opening pinned {what} at {} failed", path.display())]
    OpenPinned {
        /// What was opened.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Filesystem work on the pin directory failed.
    #[error("{what} {} failed", path.display())]
    Fs {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Pin directory of `iface` under `pin_root`.
pub fn pin_dir(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(iface)
}

/// Sizes fixed when the maps are created, and where they are pinned.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Connection-table entries (and full-NAT reverse entries).
    pub max_flows: u32,
    /// Pin the maps here — reusing the ones already pinned there (adoption). `None`: private
    /// maps (tests, benchmarks).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_flows: sshlb_common::DEFAULT_MAX_FLOWS, pin_dir: None }
    }
}

/// `(map, key size, value size, max entries)` this binary expects for every pinned map.
fn expected_layout(options: &LoadOptions) -> [(&'static str, u32, u32, u32); 17] {
    use core::mem::size_of;

    use sshlb_common::{
        stats, Backend, Bucket, Config, Flow, FlowKey, Limit, NatFlow, NatKey, OwnAddr, OwnFilter,
        Service, ServiceFilter, ServiceKey, SourceKey, Traffic, LIMITER_ENTRIES, MAX_ACL_ENTRIES,
        MAX_BACKENDS, MAX_OWN_ADDRESSES, MAX_SERVICES, RING_STRIDE,
    };
    let size = |n: usize| n as u32;
    [
        (
            map_names::SERVICES,
            size(size_of::<ServiceKey>()),
            size(size_of::<Service>()),
            MAX_SERVICES,
        ),
        (map_names::BACKENDS, 4, size(size_of::<Backend>()), MAX_BACKENDS),
        (map_names::RINGS, 4, 4, MAX_SERVICES * 2 * RING_STRIDE),
        (map_names::FLOWS, size(size_of::<FlowKey>()), size(size_of::<Flow>()), options.max_flows),
        (
            map_names::NAT_REVERSE,
            size(size_of::<NatKey>()),
            size(size_of::<NatFlow>()),
            options.max_flows,
        ),
        (map_names::CONFIG, 4, size(size_of::<Config>()), 1),
        (map_names::STATS, 4, 8, stats::COUNT),
        (map_names::SERVICE_STATS, 4, size(size_of::<Traffic>()), MAX_SERVICES),
        (map_names::BACKEND_STATS, 4, size(size_of::<Traffic>()), MAX_BACKENDS),
        // An LPM trie key is the prefix length (u32) followed by the data.
        (map_names::ACL, size(4 + size_of::<SourceKey>()), 4, MAX_ACL_ENTRIES),
        (map_names::LIMITS, 4, size(size_of::<Limit>()), MAX_SERVICES),
        (
            map_names::LIMITER,
            size(size_of::<SourceKey>()),
            size(size_of::<Bucket>()),
            LIMITER_ENTRIES,
        ),
        (map_names::SERVICE_FILTER, 4, size(size_of::<ServiceFilter>()), 1),
        (map_names::OWN_ADDRESSES, size(size_of::<OwnAddr>()), 4, MAX_OWN_ADDRESSES),
        (map_names::RESETS, 0, 0, sshlb_common::RESETS_BYTES),
        (map_names::OWN_FILTER, 4, size(size_of::<OwnFilter>()), 1),
        (map_names::FLOW_EPOCH, 4, 8, 1),
    ]
}

/// Refuses to adopt pinned maps whose layout differs from this binary's: reading them with the
/// wrong layout would corrupt live state.
fn verify_pinned_layout(pin_dir: &Path, options: &LoadOptions) -> Result<(), LoaderError> {
    for (name, key, value, max) in expected_layout(options) {
        let path = pin_dir.join(name);
        if ADDED_MAPS.contains(&name) && !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path).and_then(|map| map.info()).map_err(|e| {
            LoaderError::OpenPinned { what: "map", path: path.clone(), source: Box::new(e) }
        })?;
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        if pinned != (key, value, max) {
            return Err(LoaderError::LayoutMismatch {
                map: name,
                pinned,
                ours: (key, value, max),
                pin_dir: pin_dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// The loaded (not yet attached) data plane: the object with its program verified and loaded.
pub struct Dataplane {
    ebpf: Ebpf,
    /// What this process last wrote into each ring half (by first slot), so a republish
    /// writes only the slots that differ.
    pub(crate) ring_cache: std::collections::HashMap<u32, Vec<u32>>,
}

impl Dataplane {
    /// Parses the embedded object, creates its maps (default sizes) and loads the program.
    pub fn load() -> Result<Self, LoaderError> {
        Self::load_with(&LoadOptions::default())
    }

    /// Like [`Self::load`], with map sizes from `options`.
    pub fn load_with(options: &LoadOptions) -> Result<Self, LoaderError> {
        if OBJECT.is_empty() {
            return Err(LoaderError::ObjectMissing);
        }
        let mut loader = EbpfLoader::new();
        let coarse_clock = u8::from(has_coarse_clock());
        let jiffies = crate::clock::calibrated();
        let (jiffy_ns, jiffies_base_ns) = jiffies.map_or((0u64, 0u64), |j| (j.tick_ns, j.base_ns));
        loader
            .map_max_entries(map_names::FLOWS, options.max_flows)
            .map_max_entries(map_names::NAT_REVERSE, options.max_flows)
            .override_global(COARSE_CLOCK, &coarse_clock, true)
            .override_global(JIFFY_NS, &jiffy_ns, true)
            .override_global(JIFFIES_BASE_NS, &jiffies_base_ns, true);
        let pins: Vec<(&'static str, PathBuf)> = match &options.pin_dir {
            Some(dir) => PINNED_MAPS.iter().map(|name| (*name, dir.join(name))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            // Opens the pinned map when it exists (adoption), else creates and pins it.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .expect("the object defines the sshlb program")
            .try_into()
            .expect("sshlb is an XDP program");
        load_xdp(program).map_err(LoaderError::Load)?;
        Ok(Self { ebpf, ring_cache: std::collections::HashMap::new() })
    }

    /// The loaded XDP program (e.g. for `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .expect("the object defines the sshlb program")
            .try_into()
            .expect("sshlb is an XDP program")
    }

    /// Another program of the object, loaded (e.g. [`BASELINE_PROGRAM`] for benchmarks).
    pub fn extra_program(&mut self, name: &str) -> Result<&mut Xdp, LoaderError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .expect("the object defines the program")
            .try_into()
            .expect("an XDP program");
        if program.fd().is_err() {
            load_xdp(program).map_err(LoaderError::Load)?;
        }
        Ok(program)
    }

    /// The loaded object.
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, mutably.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// A data plane attached to an interface and pinned.
pub struct Attached {
    /// The loaded object (maps stay writable through it).
    pub dataplane: Dataplane,
    /// Where everything is pinned.
    pub pin_dir: PathBuf,
    /// Whether this took over a data plane that was already attached (restart or upgrade).
    pub adopted: bool,
}

/// The checks every attach starts with, in the order an operator would fix them: an object to
/// load, root, the interface, a BPF filesystem to pin on (mounted if missing). Returns the
/// interface's index.
fn preflight(pin_root: &Path, iface: &str) -> Result<u32, LoaderError> {
    if OBJECT.is_empty() {
        return Err(LoaderError::ObjectMissing);
    }
    if !sys::is_root() {
        return Err(LoaderError::NotRoot);
    }
    let ifindex =
        sys::ifindex(iface).ok_or_else(|| LoaderError::NoSuchInterface(iface.to_owned()))?;
    let bpffs = pin_root.parent().unwrap_or(pin_root);
    sys::ensure_bpffs(bpffs)
        .map_err(|source| LoaderError::Bpffs { path: bpffs.to_owned(), source })?;
    Ok(ifindex)
}

/// Loads, attaches and pins the data plane on `iface` (maps empty: nothing is balanced until the
/// caller writes services).
///
/// On any failure after the pin directory was created, everything done so far is undone, so a
/// failed `up` leaves the interface and bpffs exactly as they were.
pub fn up(
    pin_root: &Path,
    iface: &str,
    mode: AttachMode,
    options: &LoadOptions,
) -> Result<Attached, LoaderError> {
    let ifindex = preflight(pin_root, iface)?;
    let pin_dir = pin_dir(pin_root, iface);
    let options = LoadOptions { pin_dir: Some(pin_dir.clone()), ..options.clone() };
    let link_path = pin_dir.join(PIN_LINK);
    if link_path.exists() {
        return adopt(&pin_dir, &link_path, &options);
    }
    // Pins without a link are the remains of an `up` that died half-way: nothing carries
    // traffic through them, start clean.
    remove_pins(&pin_dir);
    fs::create_dir_all(&pin_dir).map_err(|source| LoaderError::Fs {
        what: "creating pin directory",
        path: pin_dir.clone(),
        source,
    })?;
    let mut dataplane = match Dataplane::load_with(&options) {
        Ok(dataplane) => dataplane,
        Err(err) => {
            remove_pins(&pin_dir);
            return Err(err);
        }
    };
    match attach_and_pin(&mut dataplane, &pin_dir, iface, ifindex, mode) {
        Ok(()) => Ok(Attached { dataplane, pin_dir, adopted: false }),
        Err(err) => {
            // Dropping `dataplane` detaches a link that was attached but not pinned.
            remove_pins(&pin_dir);
            Err(err)
        }
    }
}

/// Takes over a data plane a previous agent pinned (after a crash, restart or upgrade): reuses
/// its maps — connection table included — and swaps this binary's program into the existing
/// link atomically (`bpf_link_update`), so no packet goes unprocessed and no flow is lost.
fn adopt(pin_dir: &Path, link_path: &Path, options: &LoadOptions) -> Result<Attached, LoaderError> {
    verify_pinned_layout(pin_dir, options)?;
    let mut dataplane = Dataplane::load_with(options)?;
    let pinned = PinnedLink::from_pin(link_path).map_err(|e| LoaderError::OpenPinned {
        what: "XDP link",
        path: link_path.to_owned(),
        source: Box::new(e),
    })?;
    let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)).map_err(|e| {
        LoaderError::OpenPinned {
            what: "XDP link",
            path: link_path.to_owned(),
            source: Box::new(e),
        }
    })?;
    let program = dataplane.program();
    program.attach_to_link(link).map_err(|source| LoaderError::Attach {
        iface: pin_dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        mode: AttachMode::Native,
        hint: ": replacing the pinned program failed",
        source,
    })?;
    let prog_path = pin_dir.join(PIN_PROGRAM);
    let _ignored = fs::remove_file(&prog_path);
    program.pin(&prog_path).map_err(|source| LoaderError::Pin {
        what: "program",
        path: prog_path,
        source,
    })?;
    Ok(Attached { dataplane, pin_dir: pin_dir.to_owned(), adopted: true })
}

fn attach_and_pin(
    dataplane: &mut Dataplane,
    pin_dir: &Path,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(), LoaderError> {
    // The maps were pinned as they were created (LoadOptions::pin_dir).
    let program = dataplane.program();
    let path = pin_dir.join(PIN_PROGRAM);
    program.pin(&path).map_err(|source| LoaderError::Pin { what: "program", path, source })?;
    attach_pinned(program, iface, ifindex, mode, &pin_dir.join(PIN_LINK))?;
    Ok(())
}

/// Attaches `program` to `ifindex` through a bpf_link and pins the link at `path`, so the
/// program stays attached after this process exits.
pub(crate) fn attach_pinned(
    program: &mut Xdp,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    path: &Path,
) -> Result<(), LoaderError> {
    let attach_err =
        |hint, source| LoaderError::Attach { iface: iface.to_owned(), mode, hint, source };
    let link_id = program
        .attach_to_if_index(ifindex, mode.xdp_mode())
        .map_err(|source| attach_err(attach_hint(mode, &source), source))?;
    let link = program.take_link(link_id).map_err(|source| attach_err("", source))?;
    let fd_link = FdLink::try_from(link).map_err(|e| LoaderError::OpenPinned {
        what: "XDP link (this kernel attached XDP without a bpf_link, which needs Linux 5.9+)",
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    fd_link.pin(path).map_err(|source| LoaderError::Pin {
        what: "XDP link",
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// Turns the kernel's terse errno into advice.
fn attach_hint(mode: AttachMode, err: &ProgramError) -> &'static str {
    let errno = match err {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    match (mode, errno) {
        (_, Some(libc::EBUSY | libc::EEXIST)) => {
            ": another XDP program is already attached to this interface; remove it first \
             (`ip link set dev IFACE xdp off`)"
        }
        (AttachMode::Native, Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            ": the driver does not support native XDP (or its MTU/queues don't allow it); \
             retry with `--xdp-mode generic`"
        }
        _ => "",
    }
}

/// Detaches the data plane from `iface` and removes every pin. Established state is gone after
/// this: it is the operator's explicit "take the balancer off this interface".
pub fn down(pin_root: &Path, iface: &str) -> Result<(), LoaderError> {
    if !sys::is_root() {
        return Err(LoaderError::NotRoot);
    }
    let pin_dir = pin_dir(pin_root, iface);
    if !pin_dir.is_dir() {
        return Err(LoaderError::NotAttached { iface: iface.to_owned(), pin_dir });
    }
    let link_path = pin_dir.join(PIN_LINK);
    if link_path.exists() {
        let link = PinnedLink::from_pin(&link_path).map_err(|e| LoaderError::OpenPinned {
            what: "XDP link",
            path: link_path.clone(),
            source: Box::new(e),
        })?;
        // Unpinning drops the last reference once the returned FdLink goes out of scope: the
        // kernel then detaches the program from the interface.
        let fd_link = link.unpin().map_err(|source| LoaderError::Fs {
            what: "unpinning",
            path: link_path,
            source,
        })?;
        drop(fd_link);
    }
    remove_pins(&pin_dir);
    // The root goes too once no interface uses it (fails harmlessly while others remain).
    let _ignored = fs::remove_dir(pin_root);
    if pin_dir.exists() {
        return Err(LoaderError::Fs {
            what: "removing pin directory",
            path: pin_dir.clone(),
            source: fs::remove_dir(&pin_dir).err().unwrap_or_else(|| io::Error::other("unknown")),
        });
    }
    Ok(())
}

/// Best-effort removal of everything in `pin_dir` and the directory itself.
fn remove_pins(pin_dir: &Path) {
    if let Ok(entries) = fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            let _ignored = fs::remove_file(entry.path());
        }
    }
    let _ignored = fs::remove_dir(pin_dir);
}

/// The pinned counters of the data plane on `iface`.
pub fn pinned_stats(
    pin_root: &Path,
    iface: &str,
) -> Result<PerCpuArray<MapData, u64>, LoaderError> {
    let pin_dir = pin_dir(pin_root, iface);
    let path = pin_dir.join(map_names::STATS);
    if !path.exists() {
        return Err(LoaderError::NotAttached { iface: iface.to_owned(), pin_dir });
    }
    let open_err = |source: Box<dyn std::error::Error + Send + Sync>| LoaderError::OpenPinned {
        what: "STATS map",
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(|e| open_err(Box::new(e)))?;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(|e| open_err(Box::new(e)))
}

/// The pinned connection table (`FLOWS`) of the data plane on `iface`, for [`crate::flows::walk`].
pub fn pinned_flows(pin_root: &Path, iface: &str) -> Result<aya::maps::Map, LoaderError> {
    let path = pinned_path(pin_root, iface, map_names::FLOWS)?;
    let data = MapData::from_pin(&path).map_err(|e| LoaderError::OpenPinned {
        what: "FLOWS map",
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok(aya::maps::Map::HashMap(data))
}

/// The pinned backend table (`BACKENDS`) of the data plane on `iface`, indexed by backend id.
pub fn pinned_backends(pin_root: &Path, iface: &str) -> Result<Vec<Backend>, LoaderError> {
    let path = pinned_path(pin_root, iface, map_names::BACKENDS)?;
    let open_err = |source: Box<dyn std::error::Error + Send + Sync>| LoaderError::OpenPinned {
        what: "BACKENDS map",
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(|e| open_err(Box::new(e)))?;
    let table: aya::maps::Array<MapData, Backend> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))
            .map_err(|e| open_err(Box::new(e)))?;
    (0..table.len()).map(|id| table.get(&id, 0).map_err(|e| open_err(Box::new(e)))).collect()
}

/// The interfaces sshlb is attached to: the pin directories under `pin_root` holding a `FLOWS`
/// map, sorted.
pub fn attached_interfaces(pin_root: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(pin_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(map_names::FLOWS).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    found
}

fn pinned_path(pin_root: &Path, iface: &str, map: &str) -> Result<PathBuf, LoaderError> {
    let pin_dir = pin_dir(pin_root, iface);
    let path = pin_dir.join(map);
    if path.exists() {
        Ok(path)
    } else {
        Err(LoaderError::NotAttached { iface: iface.to_owned(), pin_dir })
    }
}

/// Pin path of the XDP_PASS program's link on `iface`.
pub fn pass_pin(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(format!("xdp-pass-{iface}"))
}

/// Attaches the object's one-line XDP_PASS program to `iface` (native mode) and pins its link.
///
/// For test and lab topologies: a veth only delivers frames that its peer sent back with
/// XDP_TX when the peer itself runs an XDP program in native mode.
pub fn attach_pass(pin_root: &Path, iface: &str) -> Result<PathBuf, LoaderError> {
    let ifindex = preflight(pin_root, iface)?;
    fs::create_dir_all(pin_root).map_err(|source| LoaderError::Fs {
        what: "creating pin directory",
        path: pin_root.to_owned(),
        source,
    })?;
    let path = pass_pin(pin_root, iface);
    if path.exists() {
        return Err(LoaderError::AlreadyAttached { iface: iface.to_owned(), pin_dir: path });
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(PASS_PROGRAM)
        .expect("the object defines sshlb_pass")
        .try_into()
        .expect("sshlb_pass is an XDP program");
    load_xdp(program).map_err(LoaderError::Load)?;
    attach_pinned(program, iface, ifindex, AttachMode::Native, &path)?;
    Ok(path)
}

/// How many times `BPF_PROG_LOAD` is tried while it fails with `EAGAIN` (libbpf's count).
const LOAD_ATTEMPTS: u32 = 5;

/// Loads `program` into the kernel, trying again while the verifier was interrupted: it
/// returns `EAGAIN` when a signal is pending on the loading thread (any thread of a process
/// with a SIGCHLD handler, as tokio's process support installs, can take one) — more likely the
/// longer verification takes on a loaded machine. libbpf retries the same way.
pub(crate) fn load_xdp(program: &mut Xdp) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Detaches the XDP_PASS program from `iface` (see [`attach_pass`]).
pub fn detach_pass(pin_root: &Path, iface: &str) -> Result<(), LoaderError> {
    let path = pass_pin(pin_root, iface);
    if !path.exists() {
        return Err(LoaderError::NotAttached { iface: iface.to_owned(), pin_dir: path });
    }
    let link = PinnedLink::from_pin(&path).map_err(|e| LoaderError::OpenPinned {
        what: "XDP link",
        path: path.clone(),
        source: Box::new(e),
    })?;
    drop(link.unpin().map_err(|source| LoaderError::Fs { what: "unpinning", path, source })?);
    let _ignored = fs::remove_dir(pin_root);
    Ok(())
}
