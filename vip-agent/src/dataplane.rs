//! The data plane: the embedded XDP program, its maps, and their lifetime beyond the agent process.
//!
//! [`Dataplane::open`] makes sure exactly one vip-agent program is attached to an interface:
//! * if `<pin_root>/<ifname>/` holds a link that is attached to this interface, it is **adopted**
//!   (a restarted agent takes over where the last one stopped, traffic never unguarded);
//! * otherwise the embedded object is loaded, attached (as a bpf_link) and pinned: maps first, the
//!   link last, so a present link pin always means a complete installation.
//!
//! The ingress program is XDP (native or generic) or, in `tc` mode, the same decision as a TC
//! ingress program (tcx, Linux 6.6+): cheaper than generic XDP where native XDP is not available,
//! so `auto` prefers it to generic (see [`AttachMode::Auto`]). Its link is pinned as the XDP link
//! would be, and adopted and detached the same way.
//!
//! A TC egress program (tcx, Linux 6.6+) on the same interface shares the maps and drops what the
//! node sends from a fenced VIP (`vip_common::frame::egress`). A fresh installation attaches it on
//! the pinned maps and pins it (`egress`) just before the XDP link; an adopted installation adopts
//! it, or gets one when its pin is missing (an older agent, a kernel upgrade) or stale. Where tcx
//! is missing the agent runs without it and says so.
//!
//! The programs and their maps outlive the agent: a crashed agent leaves the interface fenced by the
//! deadline in [`VipState`], not unguarded. [`detach`] removes programs and pins.
//!
//! An interface that already carries another XDP program is never taken over silently.

use std::{
    collections::BTreeMap,
    fmt, io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap as _, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use tracing::{error, info, warn};
use vip_common::{
    EgressStats, VipKey, VipState, VipStats,
    maps::{
        EGRESS_PROGRAM_NAME, EGRESS_STATS_MAP, INGRESS_TC_PROGRAM_NAME, PROGRAM_NAME, STATE_MAP,
        STATS_MAP,
    },
};

use crate::{
    address::ProgramLifetime,
    netlink::{self, LinkFacts, NetlinkError, XdpAttachment},
};

/// Where pins live unless configured otherwise: `<root>/<ifname>/{link,VIP_STATE,VIP_STATS}`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/vip-agent";
const LINK_PIN: &str = "link";
/// The TC egress program's link (tcx).
const EGRESS_PIN: &str = "egress";

/// The XDP object built from `vip-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip-ebpf"));

/// The embedded eBPF object (for tests, benchmarks and `vip-agent version`).
#[must_use]
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How to attach the ingress program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP where the driver supports it; otherwise the TC ingress program (tcx, Linux 6.6+),
    /// which costs the interface's traffic less than generic XDP (BENCHMARKS.md); generic XDP where
    /// tcx is missing too. On veth, never native: native XDP_TX on a veth only delivers when the
    /// peer has an XDP program too, which we cannot promise.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
    /// The TC ingress program only (tcx, Linux 6.6+).
    Tc,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Tc => "tc",
        })
    }
}

/// How the ingress program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// XDP, in the mode the kernel reports.
    Xdp(XdpAttachment),
    /// The TC ingress program, in the interface's tcx ingress chain.
    Tc,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xdp(mode) => mode.fmt(f),
            Self::Tc => f.write_str("tc"),
        }
    }
}

/// One way to attach the ingress program, in the order [`AttachMode`] tries them.
#[derive(Clone, Copy, Debug)]
enum Candidate {
    Xdp(XdpMode, &'static str),
    Tc,
}

impl Candidate {
    /// What to try, in order, for `mode` on an interface (`veth`: whether it is one).
    const fn for_mode(mode: AttachMode, veth: bool) -> &'static [Self] {
        const NATIVE: Candidate = Candidate::Xdp(XdpMode::Driver, "native");
        const GENERIC: Candidate = Candidate::Xdp(XdpMode::Skb, "generic");
        match mode {
            AttachMode::Native => &[NATIVE],
            AttachMode::Generic => &[GENERIC],
            AttachMode::Tc => &[Candidate::Tc],
            AttachMode::Auto if veth => &[Candidate::Tc, GENERIC],
            AttachMode::Auto => &[NATIVE, Candidate::Tc, GENERIC],
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Xdp(_, name) => name,
            Self::Tc => "tc",
        }
    }
}

/// What [`Dataplane::open`] needs.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub interface: String,
    pub mode: AttachMode,
    /// Directory on bpffs under which `<ifname>/` is created.
    pub pin_root: PathBuf,
}

/// How the program came to be on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded and attached by this process.
    Attached,
    /// Found pinned and attached: taken over from an earlier agent.
    Adopted,
}

/// Whether the TC egress program guards what this node sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressFence {
    /// Attached (tcx) and pinned: nothing leaves from a fenced VIP.
    Attached,
    /// Not attached; why (a kernel without tcx, before 6.6, or the error).
    Unavailable(String),
}

/// Errors of the data plane, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("interface {interface:?} does not exist")]
    InterfaceMissing { interface: String },
    #[error(
        "{operation} was refused: vip-agent needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON \
         (CAP_SYS_ADMIN before Linux 5.8)"
    )]
    PermissionDenied {
        operation: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "interface {interface} already has XDP program id {prog_id} ({name}, {mode}) attached and it \
         is not vip-agent's; refusing to replace it. Remove it (`ip link set dev {interface} xdp off`) \
         or choose another interface"
    )]
    ForeignProgram {
        interface: String,
        prog_id: u32,
        name: String,
        mode: XdpAttachment,
    },
    #[error(
        "the kernel attached XDP on {interface} without a bpf_link, so it cannot be pinned to outlive \
         the agent: Linux 5.9 or newer is required (5.10 LTS recommended)"
    )]
    KernelTooOld { interface: String },
    #[error("load the embedded XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("the embedded XDP object has no {what} named {name:?}")]
    ObjectContract {
        what: &'static str,
        name: &'static str,
    },
    #[error("load the {what} into the kernel")]
    LoadProgram {
        what: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attach XDP to {interface} in {mode} mode")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pin {what} at {}", path.display())]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("open pinned {what} at {}", path.display())]
    OpenPinned {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{operation} for VIP {vip} in map {map}")]
    Map {
        operation: &'static str,
        vip: IpAddr,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{operation} {}", path.display())]
    Fs {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The attached program and typed handles on its maps, for one interface.
pub struct Dataplane {
    /// Interface name, for logs and errors.
    interface: String,
    /// Interface index (in the namespace the data plane was opened in).
    ifindex: u32,
    /// The interface's MAC: the sender of every reply (written into each VIP entry).
    mac: [u8; 6],
    /// `<pin_root>/<ifname>`.
    pin_dir: PathBuf,
    /// How the program runs on the interface (as the kernel reports it).
    attachment: Attachment,
    origin: Origin,
    /// Whether the pins (and so the program) outlive this process.
    program_lifetime: ProgramLifetime,
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
    /// Kept open for the life of the agent; the pin keeps the program attached after it.
    _link: PinnedLink,
    /// The egress program's link, when attached (its pin keeps it after the agent).
    egress_link: Option<FdLink>,
    egress: EgressFence,
    /// The egress program's counters (absent only when its map could not be made).
    egress_stats: Option<EgressMap>,
    /// Failed fence writes, per VIP (for the metrics page).
    fence_failures: Arc<FenceFailures>,
    /// VIPs whose address the writer is adding before it answers (see [`Self::set_promoting`]).
    promoting: std::collections::BTreeSet<IpAddr>,
}

type EgressMap = PerCpuHashMap<MapData, VipKey, EgressStats>;

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("interface", &self.interface)
            .field("pin_dir", &self.pin_dir)
            .field("attachment", &self.attachment)
            .field("origin", &self.origin)
            .field("program_lifetime", &self.program_lifetime)
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Adopt the pinned program on `opts.interface`, or load, attach and pin a new one.
    ///
    /// # Errors
    /// See [`DataplaneError`]: missing interface, missing privileges, a foreign XDP program, a kernel
    /// without XDP bpf_link, or a failed load/attach/pin.
    pub async fn open(opts: &AttachOptions) -> Result<Self, DataplaneError> {
        let facts = netlink::link_by_name(&opts.interface)
            .await?
            .ok_or_else(|| DataplaneError::InterfaceMissing {
                interface: opts.interface.clone(),
            })?;
        let mac = facts.mac.ok_or_else(|| DataplaneError::InterfaceMissing {
            interface: format!("{} (has no Ethernet address)", opts.interface),
        })?;
        let program_lifetime = ensure_bpffs(&opts.pin_root)?;
        let pin_dir = opts.pin_root.join(&opts.interface);

        if let Some(mut dp) = Self::adopt(&facts, mac, &pin_dir)? {
            dp.program_lifetime = program_lifetime;
            info!(interface = %dp.interface, mode = %dp.attachment, pin = %pin_dir.display(),
                "adopted the pinned XDP program");
            dp.ensure_egress();
            dp.egress_stats = open_egress_stats(&pin_dir);
            return Ok(dp);
        }
        let facts = wait_for_orphan(facts).await?;
        let mut dp = Self::attach_new(&facts, mac, &pin_dir, opts.mode).await?;
        dp.program_lifetime = program_lifetime;
        info!(interface = %dp.interface, mode = %dp.attachment, requested = %opts.mode,
            pin = %pin_dir.display(), "attached the XDP program");
        Ok(dp)
    }

    /// For an adopted installation: adopt the pinned egress program if it is attached to this
    /// interface's tcx egress; otherwise (none pinned: an older agent's installation, or a stale
    /// pin) attach a new one on the pinned maps and pin it. A failure leaves the agent without the
    /// egress fence, with a warning: the ingress fence does not depend on it.
    fn ensure_egress(&mut self) {
        let pin = self.pin_dir.join(EGRESS_PIN);
        if pin.exists() {
            match adopt_egress(&pin, self.ifindex) {
                Ok(Some(link)) => {
                    info!(interface = %self.interface, pin = %pin.display(), "adopted the pinned TC egress program");
                    self.egress_link = Some(link);
                    self.egress = EgressFence::Attached;
                    return;
                }
                Ok(None) => warn!(interface = %self.interface, pin = %pin.display(),
                    "pinned TC egress program is not attached to this interface any more; replacing it"),
                Err(e) => {
                    warn!(interface = %self.interface, pin = %pin.display(), error = %crate::logging::Chain(&e),
                    "cannot adopt the pinned TC egress program; replacing it")
                }
            }
            let _ = link_detach(&pin);
            if let Err(e) = std::fs::remove_file(&pin)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(interface = %self.interface, pin = %pin.display(), error = %e, "cannot remove the stale egress pin");
            }
        }
        let egress = Egress::attach(&self.pin_dir, &self.interface);
        self.egress_link = egress.link;
        self.egress = egress.fence;
    }

    /// Take over a pinned installation if its link is the program attached to this interface.
    /// A pin that is not (interface recreated, program replaced) is stale: remove it.
    fn adopt(
        facts: &LinkFacts,
        mac: [u8; 6],
        pin_dir: &Path,
    ) -> Result<Option<Self>, DataplaneError> {
        let link_path = pin_dir.join(LINK_PIN);
        if !link_path.exists() {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&link_path)
            .map_err(|e| open_pinned_error("link", &link_path, e))?;
        let fd_link: FdLink = link.into();
        let prog_id = fd_link
            .info()
            .map_err(|e| open_pinned_error("link", &link_path, e))?
            .program_id();
        let attached = match facts.xdp.filter(|(id, _)| *id == prog_id) {
            Some((_, mode)) => Some(Attachment::Xdp(mode)),
            // Not XDP: the TC ingress program's tcx link, if it is still on this interface.
            None => (tcx_link_target(&link_path).ok().flatten()
                == Some((facts.index, BPF_TCX_INGRESS)))
            .then_some(Attachment::Tc),
        };
        let Some(attachment) = attached else {
            warn!(interface = %facts.name, pin = %pin_dir.display(), pinned_prog_id = prog_id,
                attached = ?facts.xdp, "pinned XDP link is not attached to this interface any more; replacing it");
            drop(fd_link);
            let _ = link_detach(&pin_dir.join(EGRESS_PIN));
            remove_pins(pin_dir)?;
            return Ok(None);
        };
        if let Some(found) = incompatible_layout(pin_dir) {
            // An older (or newer) vip-agent's program: its maps cannot carry our entries. Take it
            // off now and attach ours; until then nothing filters, and the agent starts fenced.
            warn!(interface = %facts.name, pin = %pin_dir.display(), pinned_prog_id = prog_id,
                %found, "pinned XDP program is from a vip-agent with another map layout; replacing it");
            drop(fd_link);
            link_detach(&link_path).map_err(|source| DataplaneError::Fs {
                operation: "detach (BPF_LINK_DETACH) the incompatible link pinned at",
                path: link_path.clone(),
                source,
            })?;
            // Its egress program, if it had one, runs on the same old maps: off with it too.
            let _ = link_detach(&pin_dir.join(EGRESS_PIN));
            remove_pins(pin_dir)?;
            return Ok(None);
        }
        let link = fd_link.pin(&link_path).or_else(|e| match e {
            // Already pinned at that path (it is the same link): reopen it.
            aya::pin::PinError::SyscallError(ref s)
                if s.io_error.kind() == io::ErrorKind::AlreadyExists =>
            {
                PinnedLink::from_pin(&link_path)
                    .map_err(|e| open_pinned_error("link", &link_path, e))
            }
            other => Err(open_pinned_error("link", &link_path, other)),
        })?;
        let (state, stats) = open_pinned_maps(pin_dir)?;
        Ok(Some(Self {
            interface: facts.name.clone(),
            ifindex: facts.index,
            mac,
            pin_dir: pin_dir.to_path_buf(),
            attachment,
            origin: Origin::Adopted,
            program_lifetime: ProgramLifetime::Pinned,
            state,
            stats,
            _link: link,
            egress_link: None,
            egress: EgressFence::Unavailable("not attached yet".to_owned()),
            egress_stats: None,
            fence_failures: Arc::default(),
            promoting: std::collections::BTreeSet::new(),
        }))
    }

    async fn attach_new(
        facts: &LinkFacts,
        mac: [u8; 6],
        pin_dir: &Path,
        mode: AttachMode,
    ) -> Result<Self, DataplaneError> {
        let interface = facts.name.clone();
        if let Some((prog_id, attached_mode)) = facts.xdp {
            return Err(DataplaneError::ForeignProgram {
                name: program_name(prog_id),
                interface,
                prog_id,
                mode: attached_mode,
            });
        }

        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| {
            if is_permission_denied(&e) {
                DataplaneError::PermissionDenied {
                    operation: "loading the XDP object (creating maps)".to_owned(),
                    source: Box::new(e),
                }
            } else {
                DataplaneError::Load(e)
            }
        })?;
        let mut chosen = None;
        let mut last_error = None;
        for &candidate in Candidate::for_mode(mode, facts.is_veth()) {
            let attached = match candidate {
                Candidate::Xdp(xdp_mode, name) => {
                    attach_xdp(&mut ebpf, facts.index, xdp_mode, name, &interface)
                }
                Candidate::Tc => attach_tc_ingress(&mut ebpf, &interface),
            };
            match attached {
                Ok(link) => {
                    chosen = Some((candidate, link));
                    break;
                }
                // Missing privileges are not a property of the mode: the next would fail alike.
                Err(e @ DataplaneError::PermissionDenied { .. }) => return Err(e),
                Err(e) => {
                    warn!(interface = %interface, mode = candidate.name(),
                        error = %crate::logging::Chain(&e), "attaching the ingress program failed");
                    last_error = Some(e);
                }
            }
        }
        let (candidate, fd_link) = match (chosen, last_error) {
            (Some(chosen), _) => chosen,
            (None, Some(e)) => return Err(e),
            (None, None) => unreachable!("at least one mode is always tried"),
        };

        std::fs::create_dir_all(pin_dir).map_err(|source| DataplaneError::Fs {
            operation: "create pin directory",
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let pinned = pin_maps_and_link(&mut ebpf, fd_link, pin_dir, &interface);
        let Installed {
            state,
            stats,
            egress_stats,
            egress,
            link,
        } = match pinned {
            Ok(v) => v,
            Err(e) => {
                // Leave no half installation behind (the link detaches when dropped unpinned).
                let _ = remove_pins(pin_dir);
                return Err(e);
            }
        };
        let attachment = match candidate {
            Candidate::Tc => Attachment::Tc,
            Candidate::Xdp(..) => Attachment::Xdp(
                netlink::link_by_name(&interface)
                    .await?
                    .and_then(|f| f.xdp)
                    .map_or(XdpAttachment::Generic, |(_, m)| m),
            ),
        };
        Ok(Self {
            interface,
            ifindex: facts.index,
            mac,
            pin_dir: pin_dir.to_path_buf(),
            attachment,
            origin: Origin::Attached,
            program_lifetime: ProgramLifetime::Pinned,
            state,
            stats,
            _link: link,
            egress_link: egress.link,
            egress: egress.fence,
            egress_stats: Some(egress_stats),
            fence_failures: Arc::default(),
            promoting: std::collections::BTreeSet::new(),
        })
    }

    /// Interface name.
    #[must_use]
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Interface index.
    #[must_use]
    pub const fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The MAC our replies carry.
    #[must_use]
    pub const fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// How the program runs on the interface.
    #[must_use]
    pub const fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// Whether this process attached the program or adopted a pinned one.
    #[must_use]
    pub const fn origin(&self) -> Origin {
        self.origin
    }

    /// `<pin_root>/<ifname>`.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether the TC egress program guards what this node sends.
    #[must_use]
    pub const fn egress(&self) -> &EgressFence {
        &self.egress
    }

    /// Whether the program outlives this process: [`ProgramLifetime::EndsWithAgent`] when the
    /// agent had to mount the bpffs of its pins itself (see [`ensure_bpffs`]). The VIP address
    /// lifetime follows from it ([`crate::address::Lifetime::until`]).
    #[must_use]
    pub const fn program_lifetime(&self) -> ProgramLifetime {
        self.program_lifetime
    }

    /// Make `vip` known to the program, fenced, with zeroed counters. An entry that already exists
    /// (adopted program) keeps its state and counters: use [`Self::fence`] to fence it.
    ///
    /// # Errors
    /// When a map update fails.
    pub fn register(&mut self, vip: impl Into<IpAddr>) -> Result<(), DataplaneError> {
        let vip = vip.into();
        let key = vip_key(vip);
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Fs {
            operation: "count possible CPUs from",
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let zero =
            PerCpuValues::try_from(vec![VipStats::default(); nr_cpus]).map_err(|source| {
                DataplaneError::Map {
                    operation: "build zeroed counters",
                    vip,
                    map: STATS_MAP,
                    source: Box::new(MapError::IoError(source)),
                }
            })?;
        ignore_exists(self.stats.insert(key, zero, BPF_NOEXIST)).map_err(|source| {
            DataplaneError::Map {
                operation: "create counters",
                vip,
                map: STATS_MAP,
                source: Box::new(source),
            }
        })?;
        if let Some(egress) = &mut self.egress_stats {
            let zero = PerCpuValues::try_from(vec![EgressStats::default(); nr_cpus]).map_err(
                |source| DataplaneError::Map {
                    operation: "build zeroed egress counters",
                    vip,
                    map: EGRESS_STATS_MAP,
                    source: Box::new(MapError::IoError(source)),
                },
            )?;
            ignore_exists(egress.insert(key, zero, BPF_NOEXIST)).map_err(|source| {
                DataplaneError::Map {
                    operation: "create egress counters",
                    vip,
                    map: EGRESS_STATS_MAP,
                    source: Box::new(source),
                }
            })?;
        }
        ignore_exists(
            self.state
                .insert(key, VipState::fenced(self.mac), BPF_NOEXIST),
        )
        .map_err(|source| DataplaneError::Map {
            operation: "register",
            vip,
            map: STATE_MAP,
            source: Box::new(source),
        })
    }

    /// Stop answering for `vip` now: ARP requests and IPv4 for it are dropped from the next packet.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn fence(&mut self, vip: impl Into<IpAddr>) -> Result<Fenced, DataplaneError> {
        write_fence(
            &mut self.state,
            vip.into(),
            VipState::fenced(self.mac),
            &self.fence_failures,
        )
    }

    /// Fence `vip` unless its entry's deadline lies after `now_ns`: the VIP task's fence at a
    /// deadline it saw pass, which must not overwrite a renewal the writer made since (issue 16,
    /// item 5). Returns how it fenced, or `None` when the entry was renewed. The caller holds the
    /// data plane's lock, as the writer does for its renewals, so nothing comes in between.
    ///
    /// # Errors
    /// When the fence can neither be written nor the entry deleted.
    pub fn fence_if_expired(
        &mut self,
        vip: IpAddr,
        now_ns: u64,
    ) -> Result<Option<Fenced>, DataplaneError> {
        fence_if_expired(
            &mut self.state,
            vip,
            VipState::fenced(self.mac),
            now_ns,
            &self.fence_failures,
        )
    }

    /// Answer for `vip` until kernel monotonic time `deadline_ns` (see [`crate::clock`]).
    ///
    /// # Errors
    /// When the map update fails.
    pub fn answer_until(
        &mut self,
        vip: impl Into<IpAddr>,
        deadline_ns: u64,
    ) -> Result<(), DataplaneError> {
        self.write(
            vip.into(),
            VipState::answering_until(self.mac, deadline_ns),
            "answer",
        )
    }

    fn write(
        &mut self,
        vip: IpAddr,
        value: VipState,
        operation: &'static str,
    ) -> Result<(), DataplaneError> {
        self.state
            .insert(vip_key(vip), value, BPF_ANY)
            .map_err(|source| DataplaneError::Map {
                operation,
                vip,
                map: STATE_MAP,
                source: Box::new(source),
            })
    }

    /// Forget `vip` (state and counters), e.g. when it left the configuration.
    ///
    /// # Errors
    /// When a map update fails for another reason than the entry being absent.
    pub fn unregister(&mut self, vip: impl Into<IpAddr>) -> Result<(), DataplaneError> {
        let vip = vip.into();
        let key = vip_key(vip);
        ignore_missing(self.state.remove(&key)).map_err(|source| DataplaneError::Map {
            operation: "remove",
            vip,
            map: STATE_MAP,
            source: Box::new(source),
        })?;
        ignore_missing(self.stats.remove(&key)).map_err(|source| DataplaneError::Map {
            operation: "remove counters",
            vip,
            map: STATS_MAP,
            source: Box::new(source),
        })?;
        if let Some(egress) = &mut self.egress_stats {
            ignore_missing(egress.remove(&key)).map_err(|source| DataplaneError::Map {
                operation: "remove egress counters",
                vip,
                map: EGRESS_STATS_MAP,
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// The current entry for `vip`, if registered.
    ///
    /// # Errors
    /// When the lookup fails for another reason than the entry being absent.
    pub fn state(&self, vip: impl Into<IpAddr>) -> Result<Option<VipState>, DataplaneError> {
        lookup_state(&self.state, vip.into())
    }

    /// Counters for `vip` summed over CPUs (latest reply time: the maximum).
    ///
    /// # Errors
    /// When the lookup fails.
    pub fn stats(&self, vip: impl Into<IpAddr>) -> Result<VipStats, DataplaneError> {
        lookup_stats(&self.stats, vip.into())
    }

    /// Every VIP the program knows, with its state and counters.
    ///
    /// # Errors
    /// When reading a map fails.
    pub fn snapshot(&self) -> Result<Vec<VipSnapshot>, DataplaneError> {
        snapshot(&self.state, &self.stats, self.egress_stats.as_ref())
    }

    /// A read-only view of the maps with descriptors of its own, for the metrics page: reading
    /// through it takes neither this data plane's lock nor anything the writer waits for.
    ///
    /// # Errors
    /// When a map descriptor cannot be duplicated.
    pub fn reader(&self) -> Result<DataplaneReader, DataplaneError> {
        let state = reopen(self.state.map(), &self.pin_dir, STATE_MAP)?;
        let stats = reopen(self.stats.map(), &self.pin_dir, STATS_MAP)?;
        let egress_stats = match &self.egress_stats {
            Some(m) => Some(reopen(m.map(), &self.pin_dir, EGRESS_STATS_MAP)?),
            None => None,
        };
        Ok(DataplaneReader {
            state: HashMap::try_from(state)
                .map_err(|e| open_pinned_error(STATE_MAP, &self.pin_dir.join(STATE_MAP), e))?,
            stats: PerCpuHashMap::try_from(stats)
                .map_err(|e| open_pinned_error(STATS_MAP, &self.pin_dir.join(STATS_MAP), e))?,
            egress_stats: match egress_stats {
                Some(m) => Some(PerCpuHashMap::try_from(m).map_err(|e| {
                    open_pinned_error(EGRESS_STATS_MAP, &self.pin_dir.join(EGRESS_STATS_MAP), e)
                })?),
                None => None,
            },
            fence_failures: Arc::clone(&self.fence_failures),
        })
    }

    /// Mark `vip` as being promoted: the writer adds its address, without this lock, and then
    /// writes its map entry. The VIP's task takes an address that appears meanwhile as ours.
    pub fn set_promoting(&mut self, vip: IpAddr, promoting: bool) {
        if promoting {
            self.promoting.insert(vip);
        } else {
            self.promoting.remove(&vip);
        }
    }

    /// Whether the writer is promoting `vip` (see [`Self::set_promoting`]).
    #[must_use]
    pub fn promoting(&self, vip: IpAddr) -> bool {
        self.promoting.contains(&vip)
    }

    /// The failed fence writes for `vip` since the agent started (each failed map update).
    #[must_use]
    pub fn fence_write_failures(&self, vip: IpAddr) -> u64 {
        self.fence_failures.get(vip)
    }

    /// The egress program's counters for `vip` summed over CPUs (zero without them).
    ///
    /// # Errors
    /// When the lookup fails.
    pub fn egress_stats(&self, vip: impl Into<IpAddr>) -> Result<EgressStats, DataplaneError> {
        self.egress_stats
            .as_ref()
            .map_or(Ok(EgressStats::default()), |m| lookup_egress(m, vip.into()))
    }
}

/// How many times a fence is written before falling back to deleting the entry. A no-prealloc
/// hash map allocates a new element for every update, so an update can fail with `ENOMEM` under
/// memory pressure; a delete allocates nothing.
pub const FENCE_WRITE_ATTEMPTS: u32 = 3;

/// How a fence reached the map.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The fenced entry is in the map: the programs drop the VIP's requests and packets.
    Written,
    /// Every write failed and the entry was deleted instead. The programs pass a VIP they do not
    /// know to the kernel, so the VIP's address must go too (the VIP's task removes it on the
    /// demotion that this fence is part of; docs/safety.md).
    Deleted,
}

/// Failed fence writes (each failed map update), per VIP: the metrics page shows them.
#[derive(Debug, Default)]
pub struct FenceFailures(Mutex<BTreeMap<IpAddr, u64>>);

impl FenceFailures {
    fn add(&self, vip: IpAddr) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(vip)
            .or_default() += 1;
    }

    /// The failed fence writes for `vip` so far.
    #[must_use]
    pub fn get(&self, vip: IpAddr) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&vip)
            .copied()
            .unwrap_or(0)
    }
}

/// The VIP state map as the writer uses it: the kernel map, or a fault-injecting one in tests.
pub(crate) trait StateMap {
    fn lookup(&self, key: &VipKey) -> Result<Option<VipState>, MapError>;
    fn update(&mut self, key: VipKey, value: VipState) -> Result<(), MapError>;
    fn delete(&mut self, key: &VipKey) -> Result<(), MapError>;
}

impl StateMap for HashMap<MapData, VipKey, VipState> {
    fn lookup(&self, key: &VipKey) -> Result<Option<VipState>, MapError> {
        match self.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn update(&mut self, key: VipKey, value: VipState) -> Result<(), MapError> {
        self.insert(key, value, BPF_ANY)
    }

    fn delete(&mut self, key: &VipKey) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// Write the fence `value` for `vip`: up to [`FENCE_WRITE_ATTEMPTS`] updates, each failure
/// counted in `failures`, then delete the entry instead (which allocates nothing). The attempts
/// follow each other at once: the caller holds the data plane's lock, often in the follower's
/// synchronous hook, and a delete is as good a fence as the update once the address is gone.
/// An error only when the delete fails too.
fn write_fence(
    map: &mut impl StateMap,
    vip: IpAddr,
    value: VipState,
    failures: &FenceFailures,
) -> Result<Fenced, DataplaneError> {
    let key = vip_key(vip);
    for attempt in 1..=FENCE_WRITE_ATTEMPTS {
        match map.update(key, value) {
            Ok(()) => return Ok(Fenced::Written),
            Err(e) => {
                failures.add(vip);
                warn!(%vip, attempt, attempts = FENCE_WRITE_ATTEMPTS, error = %crate::logging::Chain(&e),
                    "writing the fence into the map failed");
            }
        }
    }
    ignore_missing(map.delete(&key)).map_err(|source| DataplaneError::Map {
        operation: "fence (every update failed, then the delete)",
        vip,
        map: STATE_MAP,
        source: Box::new(source),
    })?;
    error!(%vip, attempts = FENCE_WRITE_ATTEMPTS,
        "could not write the fence: deleted the VIP's map entry instead; the programs now pass its \
         requests to the kernel, so its address is removed next (docs/safety.md)");
    Ok(Fenced::Deleted)
}

/// [`Dataplane::fence_if_expired`] on `map`.
fn fence_if_expired(
    map: &mut impl StateMap,
    vip: IpAddr,
    value: VipState,
    now_ns: u64,
    failures: &FenceFailures,
) -> Result<Option<Fenced>, DataplaneError> {
    // A lookup that fails is no evidence of a renewal: fence.
    if let Ok(Some(entry)) = lookup_state(map, vip)
        && entry.deadline_ns > now_ns
    {
        return Ok(None);
    }
    write_fence(map, vip, value, failures).map(Some)
}

/// The maps of a [`Dataplane`] for reading only, on descriptors of their own
/// ([`Dataplane::reader`]): the metrics page reads through it without the writer's lock.
pub struct DataplaneReader {
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
    egress_stats: Option<EgressMap>,
    fence_failures: Arc<FenceFailures>,
}

impl fmt::Debug for DataplaneReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataplaneReader").finish_non_exhaustive()
    }
}

impl DataplaneReader {
    /// The current entry for `vip`, if registered.
    ///
    /// # Errors
    /// When the lookup fails for another reason than the entry being absent.
    pub fn state(&self, vip: IpAddr) -> Result<Option<VipState>, DataplaneError> {
        lookup_state(&self.state, vip)
    }

    /// Counters for `vip` summed over CPUs.
    ///
    /// # Errors
    /// When the lookup fails.
    pub fn stats(&self, vip: IpAddr) -> Result<VipStats, DataplaneError> {
        lookup_stats(&self.stats, vip)
    }

    /// The egress program's counters for `vip` summed over CPUs (zero without them).
    ///
    /// # Errors
    /// When the lookup fails.
    pub fn egress_stats(&self, vip: IpAddr) -> Result<EgressStats, DataplaneError> {
        self.egress_stats
            .as_ref()
            .map_or(Ok(EgressStats::default()), |m| lookup_egress(m, vip))
    }

    /// The failed fence writes for `vip` since the agent started.
    #[must_use]
    pub fn fence_write_failures(&self, vip: IpAddr) -> u64 {
        self.fence_failures.get(vip)
    }
}

/// A second handle on the map `data` (`dup` of its descriptor), for [`DataplaneReader`].
fn reopen(data: &MapData, pin_dir: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    use std::os::fd::AsFd as _;
    let path = pin_dir.join(name);
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::Fs {
            operation: "duplicate the descriptor of the map pinned at",
            path: path.clone(),
            source,
        })?;
    let data = MapData::from_fd(fd).map_err(|e| open_pinned_error(name, &path, e))?;
    Map::from_map_data(data).map_err(|e| open_pinned_error(name, &path, e))
}

/// One VIP as the maps show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSnapshot {
    pub vip: IpAddr,
    pub state: VipState,
    pub stats: VipStats,
    /// The egress program's counters (zero where it never ran).
    pub egress: EgressStats,
}

/// Read-only view of a pinned installation (for `vip-agent status`; works without a running agent).
///
/// # Errors
/// When the pins cannot be opened or read. Returns `Ok(None)` when nothing is pinned for `interface`.
pub fn inspect(
    pin_root: &Path,
    interface: &str,
) -> Result<Option<Vec<VipSnapshot>>, DataplaneError> {
    let pin_dir = pin_root.join(interface);
    if !pin_dir.join(STATE_MAP).exists() {
        return Ok(None);
    }
    let (state, stats) = open_pinned_maps(&pin_dir)?;
    snapshot(&state, &stats, open_egress_stats(&pin_dir).as_ref()).map(Some)
}

/// Remove the program from `interface` and delete its pins. Returns whether anything was pinned.
///
/// # Errors
/// When a pin exists but cannot be removed.
pub fn detach(pin_root: &Path, interface: &str) -> Result<bool, DataplaneError> {
    let pin_dir = pin_root.join(interface);
    if !pin_dir.exists() {
        return Ok(false);
    }
    // Unpinning alone is not enough: the kernel releases an unreferenced bpf_link from a
    // workqueue, so a program could still be attached for a moment after this function
    // returned. BPF_LINK_DETACH takes it off the interface synchronously (under RTNL). The egress
    // program first, the XDP program last, as they were attached the other way round.
    for (pin, operation) in [
        (
            EGRESS_PIN,
            "detach (BPF_LINK_DETACH) the egress link pinned at",
        ),
        (LINK_PIN, "detach (BPF_LINK_DETACH) the link pinned at"),
    ] {
        let link_path = pin_dir.join(pin);
        match link_detach(&link_path) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(DataplaneError::Fs {
                    operation,
                    path: link_path,
                    source,
                });
            }
        }
    }
    remove_pins(&pin_dir)?;
    Ok(true)
}

/// `BPF_OBJ_GET` the link pinned at `path`, then `BPF_LINK_DETACH` it (Linux 5.9+).
///
/// After this the link object still exists (its pin and our fd hold it) but is defunct: the
/// program no longer runs on the interface.
fn link_detach(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    const BPF_LINK_DETACH: libc::c_long = 34;
    /// The `link_detach` member of `union bpf_attr`.
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }

    let fd = obj_get(path)?;
    let detach = LinkDetachAttr {
        link_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
    };
    // SAFETY: `detach` is a valid `bpf_attr` prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const detach,
            size_of::<LinkDetachAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};

    const BPF_OBJ_GET: libc::c_long = 7;
    /// The `BPF_OBJ_*` member of `union bpf_attr`.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let get = ObjAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `get` is a valid `bpf_attr` prefix of the size passed; `cpath` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const get,
            size_of::<ObjAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn snapshot(
    state: &HashMap<MapData, VipKey, VipState>,
    stats: &PerCpuHashMap<MapData, VipKey, VipStats>,
    egress: Option<&EgressMap>,
) -> Result<Vec<VipSnapshot>, DataplaneError> {
    let mut out = Vec::new();
    for entry in state.iter() {
        let (key, value) = entry.map_err(|source| DataplaneError::Map {
            operation: "iterate",
            vip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            map: STATE_MAP,
            source: Box::new(source),
        })?;
        let vip = vip_ip(key);
        out.push(VipSnapshot {
            vip,
            state: value,
            stats: lookup_stats(stats, vip)?,
            egress: egress.map_or(Ok(EgressStats::default()), |m| lookup_egress(m, vip))?,
        });
    }
    out.sort_by_key(|s| s.vip);
    Ok(out)
}

/// The map key of a VIP: IPv4 as its IPv4-mapped IPv6 address (`From<IpAddr> for VipKey`, in
/// vip-common).
#[must_use]
pub fn vip_key(vip: IpAddr) -> VipKey {
    VipKey::from(vip)
}

/// The VIP of a map key (inverse of [`vip_key`]).
#[must_use]
pub fn vip_ip(key: VipKey) -> IpAddr {
    IpAddr::from(key)
}

fn lookup_state(map: &impl StateMap, vip: IpAddr) -> Result<Option<VipState>, DataplaneError> {
    map.lookup(&vip_key(vip))
        .map_err(|source| DataplaneError::Map {
            operation: "look up",
            vip,
            map: STATE_MAP,
            source: Box::new(source),
        })
}

fn lookup_egress(map: &EgressMap, vip: IpAddr) -> Result<EgressStats, DataplaneError> {
    match map.get(&vip_key(vip), 0) {
        Ok(values) => Ok(values
            .iter()
            .fold(EgressStats::default(), |acc, s| acc.merge(s))),
        Err(MapError::KeyNotFound) => Ok(EgressStats::default()),
        Err(source) => Err(DataplaneError::Map {
            operation: "read egress counters",
            vip,
            map: EGRESS_STATS_MAP,
            source: Box::new(source),
        }),
    }
}

fn lookup_stats(
    map: &PerCpuHashMap<MapData, VipKey, VipStats>,
    vip: IpAddr,
) -> Result<VipStats, DataplaneError> {
    match map.get(&vip_key(vip), 0) {
        Ok(values) => Ok(values
            .iter()
            .fold(VipStats::default(), |acc, s| acc.merge(s))),
        Err(MapError::KeyNotFound) => Ok(VipStats::default()),
        Err(source) => Err(DataplaneError::Map {
            operation: "read counters",
            vip,
            map: STATS_MAP,
            source: Box::new(source),
        }),
    }
}

type Maps = (
    HashMap<MapData, VipKey, VipState>,
    PerCpuHashMap<MapData, VipKey, VipStats>,
);

/// Pin the maps, attach and pin the egress program on them, and pin the XDP link last (a link pin
/// means a complete installation; the VIPs are registered right after it). An egress program that
/// cannot be attached leaves the installation without it ([`Egress::attach`]).
fn pin_maps_and_link(
    ebpf: &mut Ebpf,
    link: FdLink,
    pin_dir: &Path,
    interface: &str,
) -> Result<Installed, DataplaneError> {
    let state = take_pinned_map(ebpf, STATE_MAP, pin_dir)?;
    let stats = take_pinned_map(ebpf, STATS_MAP, pin_dir)?;
    let egress_stats = take_pinned_map(ebpf, EGRESS_STATS_MAP, pin_dir)?;
    let state = HashMap::try_from(state)
        .map_err(|e| open_pinned_error(STATE_MAP, &pin_dir.join(STATE_MAP), e))?;
    let stats = PerCpuHashMap::try_from(stats)
        .map_err(|e| open_pinned_error(STATS_MAP, &pin_dir.join(STATS_MAP), e))?;
    let egress_stats = PerCpuHashMap::try_from(egress_stats)
        .map_err(|e| open_pinned_error(EGRESS_STATS_MAP, &pin_dir.join(EGRESS_STATS_MAP), e))?;
    let egress = Egress::attach(pin_dir, interface);
    let link_path = pin_dir.join(LINK_PIN);
    let link = link.pin(&link_path).map_err(|e| DataplaneError::Pin {
        what: "XDP link",
        path: link_path,
        source: Box::new(e),
    })?;
    Ok(Installed {
        state,
        stats,
        egress_stats,
        egress,
        link,
    })
}

/// What [`pin_maps_and_link`] pinned, as handles.
struct Installed {
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
    egress_stats: EgressMap,
    egress: Egress,
    link: PinnedLink,
}

/// The egress counters pinned in `pin_dir`, if there are (an installation from before the egress
/// program has none until its egress program is attached).
fn open_egress_stats(pin_dir: &Path) -> Option<EgressMap> {
    let path = pin_dir.join(EGRESS_STATS_MAP);
    if !path.exists() {
        return None;
    }
    let opened = MapData::from_pin(&path)
        .map_err(|e| open_pinned_error(EGRESS_STATS_MAP, &path, e))
        .and_then(|data| {
            Map::from_map_data(data).map_err(|e| open_pinned_error(EGRESS_STATS_MAP, &path, e))
        })
        .and_then(|map| {
            PerCpuHashMap::try_from(map).map_err(|e| open_pinned_error(EGRESS_STATS_MAP, &path, e))
        });
    match opened {
        Ok(map) => Some(map),
        Err(e) => {
            warn!(pin = %path.display(), error = %crate::logging::Chain(&e), "cannot open the egress counters");
            None
        }
    }
}

/// The egress program's link (when attached) and what status says about it.
struct Egress {
    link: Option<FdLink>,
    fence: EgressFence,
}

impl Egress {
    /// [`attach_egress`], logged; a failure is a warning and [`EgressFence::Unavailable`].
    fn attach(pin_dir: &Path, interface: &str) -> Self {
        match attach_egress(pin_dir, interface) {
            Ok(link) => {
                info!(interface, pin = %pin_dir.join(EGRESS_PIN).display(),
                    "attached the TC egress program (tcx)");
                Self {
                    link: Some(link),
                    fence: EgressFence::Attached,
                }
            }
            Err(e) => {
                let reason = crate::logging::Chain(&e).to_string();
                warn!(interface, error = %reason,
                    "no egress fence: a fenced node's kernel can still send from the VIP while it has the address \
                     (the TC egress program needs tcx, Linux 6.6 or newer)");
                Self {
                    link: None,
                    fence: EgressFence::Unavailable(reason),
                }
            }
        }
    }
}

fn take_pinned_map(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin_dir: &Path,
) -> Result<Map, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::ObjectContract { what: "map", name })?;
    let path = pin_dir.join(name);
    map.pin(&path).map_err(|e| DataplaneError::Pin {
        what: name,
        path,
        source: Box::new(e),
    })?;
    Ok(map)
}

fn open_pinned_maps(pin_dir: &Path) -> Result<Maps, DataplaneError> {
    let open = |name: &'static str| -> Result<Map, DataplaneError> {
        let path = pin_dir.join(name);
        let data = MapData::from_pin(&path).map_err(|e| open_pinned_error(name, &path, e))?;
        Map::from_map_data(data).map_err(|e| open_pinned_error(name, &path, e))
    };
    // try_from checks the map type and key/value sizes against our contract.
    let state = HashMap::try_from(open(STATE_MAP)?)
        .map_err(|e| open_pinned_error(STATE_MAP, &pin_dir.join(STATE_MAP), e))?;
    let stats = PerCpuHashMap::try_from(open(STATS_MAP)?)
        .map_err(|e| open_pinned_error(STATS_MAP, &pin_dir.join(STATS_MAP), e))?;
    Ok((state, stats))
}

/// Whether the pinned maps have other key or value sizes than this build's contract: `Some(what
/// was found)` when they do. A map that cannot be opened at all is left to the normal open path and
/// its error.
fn incompatible_layout(pin_dir: &Path) -> Option<String> {
    let expected = [
        (STATE_MAP, size_of::<VipKey>(), size_of::<VipState>()),
        (STATS_MAP, size_of::<VipKey>(), size_of::<VipStats>()),
        // Last: an installation from before the egress program has none, which is fine.
        (
            EGRESS_STATS_MAP,
            size_of::<VipKey>(),
            size_of::<EgressStats>(),
        ),
    ];
    for (name, key, value) in expected {
        let info = MapData::from_pin(pin_dir.join(name)).ok()?.info().ok()?;
        let (k, v) = (info.key_size() as usize, info.value_size() as usize);
        if (k, v) != (key, value) {
            return Some(format!(
                "{name}: key {k} / value {v} bytes, expected {key} / {value}"
            ));
        }
    }
    None
}

fn open_pinned_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
    path: &Path,
    e: E,
) -> DataplaneError {
    classify(&format!("opening pinned {what}"), e, |source| {
        DataplaneError::OpenPinned {
            what,
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Remove `link` and `egress` first (releasing the programs), then the maps and the directory.
fn remove_pins(pin_dir: &Path) -> Result<(), DataplaneError> {
    for name in [LINK_PIN, EGRESS_PIN, STATE_MAP, STATS_MAP, EGRESS_STATS_MAP] {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::Fs {
                    operation: "remove pin",
                    path,
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Fs {
            operation: "remove pin directory",
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

/// Mount bpffs at `/sys/fs/bpf` when `pin_root` lives there and nothing is mounted yet, and say
/// whether the pins will outlive this process.
///
/// A bpffs that is already there is taken to outlive the agent: the host's (systemd units assert
/// that `/sys/fs/bpf` is a mount point), or a copy of the host's mount in a mount namespace of its
/// own (`unshare --mount`), which is the same superblock. Having to mount one means this process
/// sees no bpffs: a private mount namespace with a fresh `/sys` (`ip netns exec`, a container).
/// The instance mounted here lives as long as that mount namespace, which usually means as long as
/// this process: pins, bpf_link and XDP program end with it, and the VIP address lifetime is what
/// keeps a crash safe ([`ProgramLifetime::EndsWithAgent`]). It is mounted with mode 0700: nobody
/// else needs it.
fn ensure_bpffs(pin_root: &Path) -> Result<ProgramLifetime, DataplaneError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// This process mounted it (a SIGHUP restart finds it mounted, and it still ends with us).
    static MOUNTED_HERE: AtomicBool = AtomicBool::new(false);
    let bpffs = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(bpffs) {
        return Ok(ProgramLifetime::Pinned);
    }
    if is_bpffs(bpffs) {
        return Ok(if MOUNTED_HERE.load(Ordering::Relaxed) {
            ProgramLifetime::EndsWithAgent
        } else {
            ProgramLifetime::Pinned
        });
    }
    nix::mount::mount(
        Some("bpf"),
        bpffs,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|errno| DataplaneError::Fs {
        operation: "mount bpffs at",
        path: bpffs.to_path_buf(),
        source: errno.into(),
    })?;
    MOUNTED_HERE.store(true, Ordering::Relaxed);
    warn!(path = %bpffs.display(),
        "no bpffs here (a private mount namespace: ip netns exec, a container); mounted one of our own (mode 0700), \
         which ends with this process: after a crash the XDP program is gone, and the VIP address, which is \
         only ever given a lifetime that ends before the deadline, expires by itself. Mount the host's \
         /sys/fs/bpf here to keep the program (and the fence) across a crash");
    Ok(ProgramLifetime::EndsWithAgent)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The link pinned at `pin`, if it is still attached to the tcx egress of the interface with index
/// `ifindex` (`None`: a stale pin). Read from the link itself (`BPF_OBJ_GET_INFO_BY_FD`), which
/// needs no capability beyond opening the pin; listing the interface's programs would take
/// `CAP_SYS_ADMIN`, which the units do not grant.
fn adopt_egress(pin: &Path, ifindex: u32) -> Result<Option<FdLink>, DataplaneError> {
    let target = tcx_link_target(pin).map_err(|e| open_pinned_error("egress link", pin, e))?;
    if target != Some((ifindex, BPF_TCX_EGRESS)) {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(pin).map_err(|e| open_pinned_error("egress link", pin, e))?;
    Ok(Some(link.into()))
}

/// `attach_type` of `BPF_TCX_INGRESS` and `BPF_TCX_EGRESS` (`enum bpf_attach_type`).
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The interface index and attach type of the tcx link pinned at `path`; `None` when it is not a
/// tcx link or no longer attached (a detached tcx link reports interface 0).
fn tcx_link_target(path: &Path) -> io::Result<Option<(u32, u32)>> {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_TCX: u32 = 11;
    /// The head of `struct bpf_link_info`: the union starts at 16 (it holds u64 members); its
    /// `tcx` member is `{ ifindex, attach_type }`. The rest is room the kernel may fill.
    #[repr(C, align(8))]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        attach_type: u32,
        _rest: [u64; 8],
    }
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = obj_get(path)?;
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        ifindex: 0,
        attach_type: 0,
        _rest: [0; 8],
    };
    let attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: size_of::<LinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed, and `info` a writable
    // buffer of `info_len` bytes that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            size_of::<InfoAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.link_type == BPF_LINK_TYPE_TCX && info.ifindex != 0)
        .then_some((info.ifindex, info.attach_type)))
}

/// Load the XDP program of `ebpf` (once) and attach it to the interface `ifindex` in `mode`, as a
/// bpf_link.
fn attach_xdp(
    ebpf: &mut Ebpf,
    ifindex: u32,
    mode: XdpMode,
    name: &'static str,
    interface: &str,
) -> Result<FdLink, DataplaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::ObjectContract {
            what: "XDP program",
            name: PROGRAM_NAME,
        })?;
    match program.load() {
        Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
        Err(e) => {
            return Err(program_error("loading the XDP program", e, |source| {
                DataplaneError::LoadProgram {
                    what: "XDP program",
                    source,
                }
            }));
        }
    }
    let attach_error = |source: ProgramError| {
        program_error(&format!("attaching XDP to {interface}"), source, |source| {
            DataplaneError::Attach {
                interface: interface.to_owned(),
                mode: name,
                source,
            }
        })
    };
    let link_id = program
        .attach_to_if_index(ifindex, mode)
        .map_err(attach_error)?;
    let link = program.take_link(link_id).map_err(attach_error)?;
    // A netlink-attached program (no bpf_link: kernel < 5.9) cannot be pinned. Dropping `link`
    // on this error path detaches it again, so nothing is left behind.
    FdLink::try_from(link).map_err(|_| DataplaneError::KernelTooOld {
        interface: interface.to_owned(),
    })
}

/// Load the TC ingress program of `ebpf` (on the object's own maps, pinned after it) and attach
/// it first in `interface`'s tcx ingress chain (Linux 6.6+): nothing that runs before it can
/// answer or take a VIP's frame.
fn attach_tc_ingress(ebpf: &mut Ebpf, interface: &str) -> Result<FdLink, DataplaneError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(INGRESS_TC_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::ObjectContract {
            what: "TC program",
            name: INGRESS_TC_PROGRAM_NAME,
        })?;
    match program.load() {
        Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
        Err(e) => {
            return Err(program_error(
                "loading the TC ingress program",
                e,
                |source| DataplaneError::LoadProgram {
                    what: "TC ingress program",
                    source,
                },
            ));
        }
    }
    let attach_error = |source: ProgramError| {
        program_error(
            &format!("attaching the TC ingress program to {interface}"),
            source,
            |source| DataplaneError::Attach {
                interface: interface.to_owned(),
                mode: "tcx ingress",
                source,
            },
        )
    };
    let link_id = program
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(attach_error)?;
    let link = program.take_link(link_id).map_err(attach_error)?;
    // tcx links are bpf_links: this cannot fail for a TcxOrder attachment.
    FdLink::try_from(link).map_err(|_| DataplaneError::KernelTooOld {
        interface: interface.to_owned(),
    })
}

/// Load the egress program on the maps pinned in `pin_dir`, attach it first in `interface`'s tcx
/// egress chain (nothing that runs before it can send a fenced VIP's packet elsewhere), and pin
/// its link.
fn attach_egress(pin_dir: &Path, interface: &str) -> Result<FdLink, DataplaneError> {
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(STATE_MAP, pin_dir.join(STATE_MAP))
        .map_pin_path(STATS_MAP, pin_dir.join(STATS_MAP))
        .map_pin_path(EGRESS_STATS_MAP, pin_dir.join(EGRESS_STATS_MAP))
        .load(EBPF_OBJECT)
        .map_err(|e| {
            classify(
                "loading the egress program's object on the pinned maps",
                e,
                |source| DataplaneError::Pin {
                    what: "egress program maps",
                    path: pin_dir.to_path_buf(),
                    source,
                },
            )
        })?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(EGRESS_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::ObjectContract {
            what: "TC program",
            name: EGRESS_PROGRAM_NAME,
        })?;
    program.load().map_err(|e| {
        classify("loading the TC egress program", e, |source| {
            DataplaneError::Pin {
                what: "egress program",
                path: pin_dir.to_path_buf(),
                source,
            }
        })
    })?;
    let attach_error = |source: ProgramError| DataplaneError::Attach {
        interface: interface.to_owned(),
        mode: "tcx egress",
        source,
    };
    let link_id = program
        .attach_with_options(
            interface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(attach_error)?;
    let link = program.take_link(link_id).map_err(attach_error)?;
    // tcx links are bpf_links: this cannot fail for a TcxOrder attachment.
    let link: FdLink = link.try_into().map_err(|e| DataplaneError::Pin {
        what: "egress link",
        path: pin_dir.join(EGRESS_PIN),
        source: Box::new(e),
    })?;
    let path = pin_dir.join(EGRESS_PIN);
    let pinned = link.pin(&path).map_err(|e| DataplaneError::Pin {
        what: "egress link",
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok(pinned.into())
}

/// How long [`wait_for_orphan`] waits for the kernel to release an orphaned program.
const ORPHAN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// When the interface carries a vip-agent program that nothing pinned here (the adopt step found no
/// pin), it is usually an orphan: its agent died together with the bpffs it had mounted in a mount
/// namespace of its own, and the kernel releases the bpf_link from a workqueue moments after. Wait
/// for that (up to [`ORPHAN_WAIT`]) instead of refusing a restart that comes right after a crash.
/// What is still attached then is refused by [`Dataplane::attach_new`] as usual.
async fn wait_for_orphan(facts: LinkFacts) -> Result<LinkFacts, DataplaneError> {
    let Some((prog_id, _)) = facts.xdp else {
        return Ok(facts);
    };
    if program_name(prog_id) != PROGRAM_NAME {
        return Ok(facts);
    }
    info!(interface = %facts.name, prog_id,
        "an unpinned vip-agent XDP program is attached (its agent and pins are gone); waiting for the kernel to release it");
    let until = std::time::Instant::now() + ORPHAN_WAIT;
    let mut facts = facts;
    while facts.xdp.is_some() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        facts = netlink::link_by_name(&facts.name).await?.ok_or_else(|| {
            DataplaneError::InterfaceMissing {
                interface: facts.name.clone(),
            }
        })?;
    }
    Ok(facts)
}

/// Name of a loaded program by id, for error messages.
fn program_name(prog_id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "name unknown".to_owned())
}

/// Whether the error chain bottoms out in EPERM/EACCES (missing capabilities).
fn is_permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// [`DataplaneError::PermissionDenied`] for a refused operation, `otherwise(e)` for anything else.
fn classify<E: std::error::Error + Send + Sync + 'static>(
    operation: &str,
    e: E,
    otherwise: impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DataplaneError,
) -> DataplaneError {
    if is_permission_denied(&e) {
        DataplaneError::PermissionDenied {
            operation: operation.to_owned(),
            source: Box::new(e),
        }
    } else {
        otherwise(Box::new(e))
    }
}

/// [`DataplaneError::PermissionDenied`] for a refused program operation, `otherwise(e)` for
/// anything else.
fn program_error(
    operation: &str,
    e: ProgramError,
    otherwise: impl FnOnce(ProgramError) -> DataplaneError,
) -> DataplaneError {
    if is_permission_denied(&e) {
        DataplaneError::PermissionDenied {
            operation: operation.to_owned(),
            source: Box::new(e),
        }
    } else {
        otherwise(e)
    }
}

fn ignore_exists(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io, net::IpAddr};

    use aya::maps::MapError;
    use vip_common::{VipKey, VipState};

    use super::{
        AttachMode, Candidate, FENCE_WRITE_ATTEMPTS, FenceFailures, Fenced, StateMap,
        fence_if_expired, vip_key, write_fence,
    };

    /// A state map whose first `failing` updates fail with `ENOMEM`, as a no-prealloc hash map's
    /// do when the kernel cannot allocate the new element.
    #[derive(Default)]
    struct Flaky {
        entries: BTreeMap<[u8; 16], VipState>,
        failing: u32,
        updates: u32,
        deletes: u32,
    }

    fn enomem(call: &'static str) -> MapError {
        MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(libc::ENOMEM),
        })
    }

    impl StateMap for Flaky {
        fn lookup(&self, key: &VipKey) -> Result<Option<VipState>, MapError> {
            Ok(self.entries.get(&key.addr).copied())
        }

        fn update(&mut self, key: VipKey, value: VipState) -> Result<(), MapError> {
            self.updates += 1;
            if self.updates <= self.failing {
                return Err(enomem("bpf_map_update_elem"));
            }
            self.entries.insert(key.addr, value);
            Ok(())
        }

        fn delete(&mut self, key: &VipKey) -> Result<(), MapError> {
            self.deletes += 1;
            self.entries
                .remove(&key.addr)
                .map(|_| ())
                .ok_or(MapError::KeyNotFound)
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const VIP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));

    fn answering_map(failing: u32) -> Flaky {
        let mut map = Flaky {
            failing,
            ..Flaky::default()
        };
        map.entries
            .insert(vip_key(VIP).addr, VipState::answering_until(MAC, u64::MAX));
        map
    }

    #[test]
    fn a_fence_write_that_fails_is_retried() {
        let mut map = answering_map(FENCE_WRITE_ATTEMPTS - 1);
        let failures = FenceFailures::default();
        let fenced = write_fence(&mut map, VIP, VipState::fenced(MAC), &failures);
        assert_eq!(fenced.expect("fenced on the last attempt"), Fenced::Written);
        assert_eq!(map.updates, FENCE_WRITE_ATTEMPTS);
        assert_eq!(map.deletes, 0);
        assert_eq!(
            map.entries.get(&vip_key(VIP).addr),
            Some(&VipState::fenced(MAC))
        );
        assert_eq!(failures.get(VIP), u64::from(FENCE_WRITE_ATTEMPTS - 1));
    }

    #[test]
    fn a_fence_write_that_keeps_failing_deletes_the_entry_and_is_counted() {
        let mut map = answering_map(u32::MAX);
        let failures = FenceFailures::default();
        let fenced = write_fence(&mut map, VIP, VipState::fenced(MAC), &failures);
        assert_eq!(fenced.expect("deleted instead"), Fenced::Deleted);
        assert_eq!(map.updates, FENCE_WRITE_ATTEMPTS, "bounded retries");
        assert_eq!(map.deletes, 1);
        assert!(map.entries.is_empty(), "no answering entry may stay behind");
        assert_eq!(failures.get(VIP), u64::from(FENCE_WRITE_ATTEMPTS));
        assert_eq!(failures.get(IpAddr::from([10, 0, 0, 6])), 0);
    }

    /// Issue 16, item 5: the writer renewed the entry just before the VIP task, which saw the old
    /// deadline pass, fences. The renewal must survive; an entry still expired is fenced.
    #[test]
    fn the_deadline_fence_keeps_a_renewal_written_just_before_it() {
        let now = 1_000_000_000;
        let failures = FenceFailures::default();
        let mut map = Flaky::default();
        let renewed = VipState::answering_until(MAC, now + 1);
        map.entries.insert(vip_key(VIP).addr, renewed);
        let fenced = fence_if_expired(&mut map, VIP, VipState::fenced(MAC), now, &failures);
        assert_eq!(fenced.expect("looked up"), None, "not fenced");
        assert_eq!(map.entries.get(&vip_key(VIP).addr), Some(&renewed));
        assert_eq!(map.updates, 0, "nothing written");

        let expired = VipState::answering_until(MAC, now);
        map.entries.insert(vip_key(VIP).addr, expired);
        let fenced = fence_if_expired(&mut map, VIP, VipState::fenced(MAC), now, &failures);
        assert_eq!(fenced.expect("fenced"), Some(Fenced::Written));
        assert_eq!(
            map.entries.get(&vip_key(VIP).addr),
            Some(&VipState::fenced(MAC))
        );

        map.entries.clear();
        let fenced = fence_if_expired(&mut map, VIP, VipState::fenced(MAC), now, &failures);
        assert_eq!(
            fenced.expect("fenced"),
            Some(Fenced::Written),
            "an absent entry is fenced too"
        );
    }

    #[test]
    fn a_fence_on_a_missing_entry_that_keeps_failing_is_deleted_too() {
        let mut map = Flaky {
            failing: u32::MAX,
            ..Flaky::default()
        };
        let failures = FenceFailures::default();
        let fenced = write_fence(&mut map, VIP, VipState::fenced(MAC), &failures);
        assert_eq!(fenced.expect("nothing to delete is fine"), Fenced::Deleted);
    }

    fn names(mode: AttachMode, veth: bool) -> Vec<&'static str> {
        Candidate::for_mode(mode, veth)
            .iter()
            .map(|c| c.name())
            .collect()
    }

    #[test]
    fn auto_prefers_tc_to_generic_and_never_tries_native_on_veth() {
        assert_eq!(names(AttachMode::Auto, true), ["tc", "generic"]);
        assert_eq!(names(AttachMode::Auto, false), ["native", "tc", "generic"]);
    }

    #[test]
    fn an_explicit_mode_is_the_only_one_tried() {
        for veth in [true, false] {
            assert_eq!(names(AttachMode::Native, veth), ["native"]);
            assert_eq!(names(AttachMode::Generic, veth), ["generic"]);
            assert_eq!(names(AttachMode::Tc, veth), ["tc"]);
        }
    }
}
