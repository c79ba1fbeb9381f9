//! The lab file: which simulated hosts there are, which VMs run on them with
//! which roles, and which VMs run as FT pairs on which two hosts. A TOML
//! file, or the built-in default; [`LabFile::plan`] checks it and resolves
//! it into a [`Plan`]: node ids, addresses, MACs and guest command lines.
//!
//! ```toml
//! [cluster]            # optional; the values every GFS and MapReduce node agrees on
//! replicas = 2
//! chunk_kib = 1024
//!
//! [[host]]
//! name = "h1"
//! [[host]]
//! name = "h5"
//! spare = true         # runs nothing at start
//!
//! [[vm]]
//! name = "gfs-master"
//! role = "gfs-master"  # gfs-master, gfs-chunkserver, mr-coordinator, mr-worker
//! host = "h1"
//! backup = "h3"        # an FT pair: primary on `host`, backup on `backup`
//! ```
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use gfs::wire::NodeId;

/// The lab network (inside the lab's own namespaces only).
pub const LAN_PREFIX: [u8; 3] = [10, 77, 0];
/// The FT logging network between hosts.
pub const FT_PREFIX: [u8; 3] = [10, 78, 0];
/// Where the host clients sit on the lab network.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
/// The backup of the pair whose VM is node N listens on its host's FT address at this plus N.
pub const BACKUP_PORT_BASE: u16 = 7000;
/// Host names become interface names in the switch namespaces (at most 15 bytes).
const MAX_HOST_NAME_BYTES: usize = 12;

/// Why a lab file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the lab file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the lab file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("the lab file is inconsistent: {0}")]
    Invalid(String),
}

/// What every GFS and MapReduce node must agree on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// The mesh's TCP port on every node.
    pub port: u16,
    /// Replicas per GFS chunk.
    pub replicas: u32,
    /// GFS chunk size in KiB (a multiple of 64).
    pub chunk_kib: u32,
    /// GFS lease length.
    pub lease_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { port: 7100, replicas: 2, chunk_kib: 1024, lease_ms: 2000 }
    }
}

impl Cluster {
    /// The `key=value` settings every guest command line carries.
    fn cmdline(&self) -> String {
        format!(
            "port={} replicas={} chunk_kib={} lease_ms={}",
            self.port, self.replicas, self.chunk_kib, self.lease_ms
        )
    }

    /// The GFS configuration the guests derive from the same settings.
    pub fn gfs_config(&self, master_id: NodeId) -> gfs::Config {
        gfs::Config::for_vms(
            master_id,
            self.chunk_kib * 1024,
            self.replicas as usize,
            self.lease_ms,
        )
    }
}

/// One simulated host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    /// A spare runs nothing at start (it is where redundancy is restored to).
    #[serde(default)]
    pub spare: bool,
}

/// What a VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    GfsMaster,
    GfsChunkserver,
    MrCoordinator,
    MrWorker,
}

impl Role {
    /// The guest's `role=` value.
    pub fn guest_role(self) -> &'static str {
        match self {
            Role::GfsMaster => "gfs-master",
            Role::GfsChunkserver => "gfs-chunkserver",
            Role::MrCoordinator => "mr-coordinator",
            Role::MrWorker => "mr-worker",
        }
    }

    /// The image size of the VM's disk, if the role keeps state on one.
    fn default_disk(self) -> Option<&'static str> {
        match self {
            Role::GfsMaster => Some("16M"),
            Role::GfsChunkserver => Some("96M"),
            Role::MrCoordinator => None,
            Role::MrWorker => Some("64M"),
        }
    }
}

/// One VM of the lab file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub role: Role,
    /// Where it runs (an FT pair's primary).
    pub host: String,
    /// Where an FT pair's backup runs; absent: a plain VM.
    #[serde(default)]
    pub backup: Option<String>,
    /// Guest RAM (K/M/G suffixes).
    #[serde(default)]
    pub mem: Option<String>,
    /// Disk image size, for roles with a disk.
    #[serde(default)]
    pub disk: Option<String>,
}

/// A lab file as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    #[serde(default)]
    pub cluster: Cluster,
    pub host: Vec<HostSpec>,
    pub vm: Vec<VmSpec>,
}

/// The built-in lab: the GFS master and the MapReduce coordinator as FT
/// pairs, three chunkservers, three workers, on four hosts plus a spare.
/// The pairs' primaries (h1, h2) hold one chunkserver and one worker, so
/// losing both primary hosts still leaves a replica of every chunk.
pub const DEFAULT_LAB: &str = r#"
[[host]]
name = "h1"
[[host]]
name = "h2"
[[host]]
name = "h3"
[[host]]
name = "h4"
[[host]]
name = "h5"
spare = true

[[vm]]
name = "gfs-master"
role = "gfs-master"
host = "h1"
backup = "h3"

[[vm]]
name = "cs1"
role = "gfs-chunkserver"
host = "h1"

[[vm]]
name = "cs2"
role = "gfs-chunkserver"
host = "h3"

[[vm]]
name = "cs3"
role = "gfs-chunkserver"
host = "h4"

[[vm]]
name = "mr-coordinator"
role = "mr-coordinator"
host = "h2"
backup = "h4"

[[vm]]
name = "worker1"
role = "mr-worker"
host = "h2"

[[vm]]
name = "worker2"
role = "mr-worker"
host = "h3"

[[vm]]
name = "worker3"
role = "mr-worker"
host = "h4"
"#;

/// A host of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub spare: bool,
    /// Its address on the FT logging network.
    pub ft_ip: Ipv4Addr,
}

/// A VM of the plan, with everything needed to start it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmPlan {
    pub name: String,
    pub role: Role,
    pub node: NodeId,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host: String,
    pub backup: Option<String>,
    pub mem: String,
    pub disk: Option<String>,
    pub cmdline: String,
}

impl VmPlan {
    /// `ID:ADDRESS`, as guest command lines name peers.
    pub fn peer(&self) -> String {
        format!("{}:{}", self.node, self.ip)
    }

    /// The TAP device of this VM in its host's namespace.
    pub fn tap(&self) -> String {
        format!("vm{}", self.node)
    }
}

/// A checked lab: hosts, VMs with their node ids and command lines.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub cluster: Cluster,
    pub hosts: Vec<HostPlan>,
    pub vms: Vec<VmPlan>,
}

impl Plan {
    /// The VMs with `role`, in node id order.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &VmPlan> {
        self.vms.iter().filter(move |vm| vm.role == role)
    }

    /// The VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&VmPlan> {
        self.vms.iter().find(|vm| vm.name == name)
    }

    /// The GFS master (every plan has one).
    pub fn master(&self) -> &VmPlan {
        self.with_role(Role::GfsMaster).next().expect("a plan has a GFS master")
    }

    /// The MapReduce coordinator, if the lab runs MapReduce.
    pub fn coordinator(&self) -> Option<&VmPlan> {
        self.with_role(Role::MrCoordinator).next()
    }
}

impl LabFile {
    /// Reads the lab file at `path`, or the built-in lab without one.
    pub fn load(path: Option<&std::path::Path>) -> Result<LabFile, SpecError> {
        let (text, name) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| SpecError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
                path.display().to_string(),
            ),
            None => (DEFAULT_LAB.to_string(), "(built-in)".to_string()),
        };
        toml::from_str(&text)
            .map_err(|error| SpecError::Parse { path: name, message: error.to_string() })
    }

    /// Checks the lab and gives every VM its node id, address and command line.
    pub fn plan(&self) -> Result<Plan, SpecError> {
        let invalid = |message: String| Err(SpecError::Invalid(message));
        let cluster = self.cluster.clone();
        if !cluster.chunk_kib.is_multiple_of(64)
            || cluster.chunk_kib == 0
            || cluster.chunk_kib > 65536
        {
            return invalid(format!("chunk_kib = {}: use a multiple of 64", cluster.chunk_kib));
        }
        let mut hosts = Vec::new();
        for (index, host) in self.host.iter().enumerate() {
            let name_ok = !host.name.is_empty()
                && host.name.len() <= MAX_HOST_NAME_BYTES
                && host.name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
            if !name_ok {
                return invalid(format!(
                    "host name `{}`: use 1 to {MAX_HOST_NAME_BYTES} letters, digits or `-`",
                    host.name
                ));
            }
            if hosts.iter().any(|known: &HostPlan| known.name == host.name) {
                return invalid(format!("host `{}` is named twice", host.name));
            }
            let [a, b, c] = FT_PREFIX;
            hosts.push(HostPlan {
                name: host.name.clone(),
                spare: host.spare,
                ft_ip: Ipv4Addr::new(a, b, c, index as u8 + 1),
            });
        }
        if hosts.len() > 200 {
            return invalid(format!("{} hosts: at most 200", hosts.len()));
        }
        // Node ids: GFS below MapReduce, the master and the coordinator the
        // lowest of their kind (the guests' mesh dials by id).
        let mut vms: Vec<&VmSpec> = self.vm.iter().collect();
        vms.sort_by_key(|vm| vm.role);
        let count = |role| vms.iter().filter(|vm| vm.role == role).count();
        if count(Role::GfsMaster) != 1 || count(Role::GfsChunkserver) == 0 {
            return invalid("a lab needs one gfs-master and at least one gfs-chunkserver".into());
        }
        if count(Role::MrCoordinator) > 1
            || (count(Role::MrWorker) > 0) != (count(Role::MrCoordinator) == 1)
        {
            return invalid("MapReduce needs one mr-coordinator and at least one mr-worker".into());
        }
        if vms.len() > 200 {
            return invalid(format!("{} VMs: at most 200", vms.len()));
        }
        let mut plans: Vec<VmPlan> = Vec::new();
        for (index, vm) in vms.iter().enumerate() {
            if plans.iter().any(|known| known.name == vm.name) || vm.name.is_empty() {
                return invalid(format!("VM name `{}` is empty or used twice", vm.name));
            }
            let host_of = |name: &str| hosts.iter().find(|host| host.name == name);
            match host_of(&vm.host) {
                None => {
                    return invalid(format!("VM `{}` runs on unknown host `{}`", vm.name, vm.host))
                }
                Some(host) if host.spare => {
                    return invalid(format!("VM `{}` runs on spare host `{}`", vm.name, vm.host))
                }
                Some(_) => {}
            }
            if let Some(backup) = &vm.backup {
                if host_of(backup).is_none() || *backup == vm.host {
                    return invalid(format!(
                        "VM `{}`: its backup host `{backup}` must be another known host",
                        vm.name
                    ));
                }
            }
            let node = index as NodeId + 1;
            let [a, b, c] = LAN_PREFIX;
            plans.push(VmPlan {
                name: vm.name.clone(),
                role: vm.role,
                node,
                ip: Ipv4Addr::new(a, b, c, 10 + node as u8),
                mac: format!("52:54:00:77:00:{:02x}", node),
                host: vm.host.clone(),
                backup: vm.backup.clone(),
                mem: vm.mem.clone().unwrap_or_else(|| "128M".into()),
                disk: vm.disk.clone().or_else(|| vm.role.default_disk().map(str::to_string)),
                cmdline: String::new(),
            });
        }
        let mut plan = Plan { cluster, hosts, vms: plans };
        let cmdlines: Vec<String> = plan.vms.iter().map(|vm| cmdline(&plan, vm)).collect();
        for (vm, line) in plan.vms.iter_mut().zip(cmdlines) {
            vm.cmdline = line;
        }
        Ok(plan)
    }
}

/// `ID:ADDRESS,...` of `vms`.
fn peers<'a>(vms: impl Iterator<Item = &'a VmPlan>) -> String {
    vms.map(VmPlan::peer).collect::<Vec<_>>().join(",")
}

/// The guest command line of `vm` (see the module docs of the guest's
/// `roles/gfs.rs` and `roles/mr.rs`).
fn cmdline(plan: &Plan, vm: &VmPlan) -> String {
    let head = format!("role={} node={} ip={}/24", vm.role.guest_role(), vm.node, vm.ip);
    let master = plan.master();
    let chunkservers = || peers(plan.with_role(Role::GfsChunkserver));
    let gfs_nodes = || format!("master={} chunkservers={}", master.peer(), chunkservers());
    let role_args = match vm.role {
        Role::GfsMaster => String::new(),
        Role::GfsChunkserver => format!(
            "master={} peers={}",
            master.peer(),
            peers(plan.with_role(Role::GfsChunkserver).filter(|other| other.node != vm.node))
        ),
        Role::MrCoordinator => gfs_nodes(),
        Role::MrWorker => format!(
            "coordinator={} {} workers={}",
            plan.coordinator().expect("checked: workers have a coordinator").peer(),
            gfs_nodes(),
            peers(plan.with_role(Role::MrWorker).filter(|other| other.node < vm.node))
        ),
    };
    format!("{head} {role_args} {}", plan.cluster.cmdline())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lab_plans_pairs_ids_and_peers() {
        let plan = LabFile::load(None).unwrap().plan().unwrap();
        assert_eq!(plan.vms.len(), 8);
        assert_eq!(plan.master().node, 1);
        assert_eq!(plan.master().backup.as_deref(), Some("h3"));
        let coordinator = plan.coordinator().unwrap();
        assert_eq!(coordinator.node, 5);
        assert!(coordinator.cmdline.contains("master=1:10.77.0.11 chunkservers=2:10.77.0.12,"));
        let worker3 = plan.vm("worker3").unwrap();
        assert!(
            worker3.cmdline.contains("workers=6:10.77.0.16,7:10.77.0.17 "),
            "{}",
            worker3.cmdline
        );
        assert!(plan.hosts.iter().any(|host| host.spare));
    }

    #[test]
    fn a_lab_file_with_a_vm_on_an_unknown_host_is_refused() {
        let text = r#"
            [[host]]
            name = "a"
            [[vm]]
            name = "m"
            role = "gfs-master"
            host = "b"
            [[vm]]
            name = "c"
            role = "gfs-chunkserver"
            host = "a"
        "#;
        let file: LabFile = toml::from_str(text).unwrap();
        let error = file.plan().unwrap_err().to_string();
        assert!(error.contains("unknown host `b`"), "{error}");
    }
}
