//! Argument definitions (clap derive): Weave Ignite's verbs and flags, plus ignite's own.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ignite: run OCI (Docker) images as microVMs, with a container UX and GitOps.
#[derive(Debug, Parser)]
#[command(name = "ignite", version, about, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Specify the log level for the program (trace, debug, info, warn, error)
    #[arg(long, global = true, default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub log_level: String,
    /// The quiet mode allows for machine-parsable output by printing only IDs
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// State directory
    #[arg(long, global = true, env = "IGNITE_ROOT", default_value = ignite_store::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Ignite configuration path (default /etc/ignite/config.yaml when it exists)
    #[arg(long, global = true, env = "IGNITE_CONFIG")]
    pub ignite_config: Option<PathBuf>,
    /// Work through ignited's API socket (default /run/ignite/ignited.sock); without this flag
    /// ignited is used when it runs on this state root
    #[arg(long, global = true, env = "IGNITE_DAEMON_SOCKET", num_args = 0..=1, require_equals = true,
          default_missing_value = crate::remote::DEFAULT_SOCKET)]
    pub daemon: Option<PathBuf>,
    /// Network plugin to use: cni (Ignite's docker-bridge is taken as cni) or none; for create,
    /// run and start, before or after the verb
    #[arg(long, global = true)]
    pub network_plugin: Option<String>,
    /// Container runtime (Ignite's containerd or docker): accepted, and ignored — ignite needs
    /// no container runtime
    #[arg(long, global = true)]
    pub runtime: Option<String>,
    /// Prefix string for system identifiers: the VMM's process name, the VM's network
    /// namespace, its status (default from the configuration: ignite)
    #[arg(long, global = true)]
    pub id_prefix: Option<String>,
    /// The Firecracker binary for --vmm firecracker (default: $IGNITE_FIRECRACKER, else the
    /// configuration's spec.vmmBinaries.firecracker, else firecracker on PATH)
    #[arg(long, global = true, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running VM's serial console (detach with ^P^Q)
    Attach(VmArg),
    /// Output shell completion code (bash, zsh or fish)
    Completion(CompletionArgs),
    /// Copy files into/from a running VM (VM:PATH on either side)
    Cp(CpArgs),
    /// Create a new VM without starting it
    Create(CreateArgs),
    /// Check this host: packages, kernel, KVM, disk space — each problem with its fix
    Doctor(DoctorArgs),
    /// Execute a command in a running VM
    Exec(ExecArgs),
    /// Run GitOps in the foreground: the VMs of a Git repository's manifests (as `ignited
    /// gitops`, which this runs)
    Gitops(GitopsArgs),
    /// Manage base images (`ignite images` lists them)
    #[command(visible_alias = "images")]
    Image(ImageCmd),
    /// Inspect an ignite object (vm, image or kernel)
    Inspect(InspectArgs),
    /// Manage VM kernels (`ignite kernels` lists them)
    #[command(visible_alias = "kernels")]
    Kernel(KernelCmd),
    /// Kill running VMs
    Kill(VmsArg),
    /// Get the serial console log of a VM
    Logs(LogsArgs),
    /// Write man pages for every command into a directory
    Man(ManArgs),
    /// List running VMs
    Ps(PsArgs),
    /// Remove VMs
    Rm(RmArgs),
    /// Remove images (alias of `image rm`)
    Rmi(RmObjArgs),
    /// Remove kernels (alias of `kernel rm`)
    Rmk(RmObjArgs),
    /// Create a new VM and start it
    Run(RunArgs),
    /// Take and manage snapshots of running VMs (memory, devices and disk); `run
    /// --from-snapshot` clones one
    #[command(visible_alias = "snapshots")]
    Snapshot(SnapshotCmd),
    /// SSH into a running VM
    Ssh(SshArgs),
    /// Start a VM
    Start(StartArgs),
    /// Stop running VMs
    Stop(StopArgs),
    /// Print the version of ignite
    Version(VersionArgs),
    /// Manage VMs (the VM verbs, grouped)
    #[command(visible_alias = "vms")]
    Vm(VmCmd),
}

#[derive(Debug, Args)]
pub struct VmArg {
    /// VM name, ID, or a unique prefix of either
    pub vm: String,
}

#[derive(Debug, Args)]
pub struct VmsArg {
    /// VM names, IDs, or unique prefixes
    #[arg(required = true)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    #[arg(value_enum, default_value = "bash")]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Output directory
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct CreateArgs {
    /// OCI image to use as the VM's root filesystem (docker://, docker-archive:, oci:, oci-archive: or a registry reference)
    pub image: Option<String>,
    /// Specify a path to a file with the API resources you want to pass
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Copy files/directories from the host to the created VM (HOST:VM)
    #[arg(short = 'f', long = "copy-files", value_delimiter = ',')]
    pub copy_files: Vec<String>,
    /// VM vCPU count
    #[arg(long)]
    pub cpus: Option<u64>,
    /// Set the command line for the kernel
    #[arg(long)]
    pub kernel_args: Option<String>,
    /// Specify an OCI image containing the kernel at /boot/vmlinux
    #[arg(short = 'k', long)]
    pub kernel_image: Option<String>,
    /// Set a label (foo=bar)
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Amount of RAM to allocate for the VM (default 512MB)
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Specify the name
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// A fixed IPv4 address for the VM (from the CNI network's subnet)
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Map host ports to VM ports ([hostip:]hostport:vmport[/tcp|udp])
    #[arg(short = 'p', long = "ports", value_delimiter = ',')]
    pub ports: Vec<String>,
    /// Require VM name to be passed, no name generation
    #[arg(long)]
    pub require_name: bool,
    /// VM filesystem size, for example 5GB or 2048MB (default 4GB)
    #[arg(short = 's', long, allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Enable SSH for the VM; with =PATH that public key is imported, else a key pair is generated
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ssh: Option<String>,
    /// Expose block devices from the host inside the VM (HOSTDEV:VMPATH)
    #[arg(short = 'v', long = "volumes", value_delimiter = ',')]
    pub volumes: Vec<String>,
    /// VMM backend: qemu or firecracker
    #[arg(long)]
    pub vmm: Option<String>,
    /// Install and start the guest agent (exec and cp without sshd); --agent=false opts out
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub agent: Option<bool>,
    /// Confine the VMM (own uid, namespaces, cgroup, seccomp; the default); --jail=false runs
    /// it unconfined, as root, to debug it
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub jail: Option<bool>,
    /// Ignite's sandbox image (accepted for compatibility; ignite runs no sandbox container)
    #[arg(long, hide = true)]
    pub sandbox_image: Option<String>,
    /// Directory containing the registry configuration (default ~/.docker/)
    #[arg(long)]
    pub registry_config_dir: Option<PathBuf>,
    /// Checks whose errors are shown as warnings ('all' for all)
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_checks: Vec<String>,
    /// When to fetch the image and kernel: missing, always or never
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Insecure registry: http://HOST[:PORT] (plain HTTP), https://HOST[:PORT] (unverified TLS), or HOST[:PORT]
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Attach to the VM after starting
    #[arg(short, long)]
    pub interactive: bool,
    /// Debug mode: the VMM logs the guest's device errors into the VM's vmm.log (Ignite kept its
    /// sandbox container; ignite keeps a stopped VM's files anyway)
    #[arg(short, long)]
    pub debug: bool,
    /// Accelerator: kvm, tcg, or auto (KVM when it can boot a guest here; env IGNITE_ACCEL)
    #[arg(long)]
    pub accel: Option<String>,
    /// Clone a snapshot instead of booting an image: a new VM with the snapshot's machine, its
    /// own copy of the snapshot's disk, its own name, MAC, address and machine-id, resumed
    /// where the snapshot was taken
    #[arg(long, value_name = "SNAPSHOT")]
    pub from_snapshot: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotCmd {
    #[command(subcommand)]
    pub command: Option<SnapshotSub>,
    /// Without a subcommand: list (as `ls`)
    #[command(flatten)]
    pub ls: LsArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotSub {
    /// Take a snapshot of a running VM (it is paused while its memory and disk are saved, then
    /// runs on)
    Create(SnapshotCreateArgs),
    /// List snapshots
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove snapshots
    Rm(SnapshotRmArgs),
    /// Show a snapshot
    Inspect(SnapshotInspectArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// VM name, ID, or a unique prefix of either
    pub vm: String,
    /// The snapshot's name (default: the VM's name and the time)
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotRmArgs {
    /// Snapshot names, IDs, or unique prefixes
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotInspectArgs {
    pub snapshot: String,
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: ObjOutput,
    /// Format the output using a template ({{.Status.PausedMs}} or {.status.pausedMs})
    #[arg(short, long)]
    pub template: Option<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    pub vm: String,
    /// Attach to the VM after starting
    #[arg(short, long)]
    pub interactive: bool,
    /// Debug mode: the VMM logs the guest's device errors into the VM's vmm.log (Ignite kept its
    /// sandbox container; ignite keeps a stopped VM's files anyway)
    #[arg(short, long)]
    pub debug: bool,
    /// Checks whose errors are shown as warnings ('all' for all)
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_checks: Vec<String>,
    /// Accelerator: kvm, tcg, or auto (KVM when it can boot a guest here; env IGNITE_ACCEL)
    #[arg(long)]
    pub accel: Option<String>,
    /// Resume the VM from a snapshot of it instead of booting: its disk becomes the snapshot's
    /// (the one it had is kept in its directory: disk.before-snapshot.qcow2, or
    /// upper.before-snapshot.ext4 under Firecracker)
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "accel")]
    pub from_snapshot: Option<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[arg(required = true)]
    pub vms: Vec<String>,
    /// Force kill the VM
    #[arg(short = 'f', long)]
    pub force_kill: bool,
    /// Seconds to wait for a graceful shutdown before killing
    #[arg(short = 't', long, default_value_t = 10)]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required_unless_present = "config")]
    pub vms: Vec<String>,
    /// Remove the VM described in this file
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Force this operation: stop running VMs first
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PsOutput {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all VMs, not just running ones
    #[arg(short, long)]
    pub all: bool,
    /// Filter the VMs, e.g. "{{.ObjectMeta.Name}}=my-vm,{{.Spec.CPUs}}!=3"
    #[arg(short, long)]
    pub filter: Option<String>,
    /// Format each VM using a template ({{.Path}} or {.jsonpath})
    #[arg(short, long)]
    pub template: Option<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: PsOutput,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Image,
    Kernel,
    Snapshot,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ObjOutput {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(value_enum, ignore_case = true)]
    pub kind: Kind,
    pub object: String,
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: ObjOutput,
    /// Format the output using a template ({{.Status.Network.IPAddresses}} or {.status.network.ipAddresses})
    #[arg(short, long)]
    pub template: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub vm: String,
    /// Follow the log output
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub vm: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Override the VM's default identity file
    #[arg(short, long)]
    pub identity: Option<PathBuf>,
    /// Timeout waiting for connection in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u32,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for the command (KEY=VALUE; repeatable)
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory of the command in the VM
    #[arg(short, long)]
    pub workdir: Option<String>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    pub vm: String,
    /// Command to run instead of a login shell
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Override the VM's default identity file
    #[arg(short, long)]
    pub identity: Option<PathBuf>,
    /// Timeout waiting for connection in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u32,
    /// Allocate a pseudo-TTY (default true; -t=false for none)
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub tty: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    pub source: String,
    pub dest: String,
    /// Override the VM's default identity file
    #[arg(short, long)]
    pub identity: Option<PathBuf>,
    /// Timeout waiting for connection in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u32,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format: short, json or yaml
    #[arg(short, long, value_parser = ["short", "json", "yaml"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Source: registry reference, docker://, docker-archive:PATH, oci:DIR[:TAG], oci-archive:PATH[:TAG]
    pub source: String,
    /// Directory containing the registry configuration (default ~/.docker/)
    #[arg(long)]
    pub registry_config_dir: Option<PathBuf>,
    /// Insecure registry: http://HOST[:PORT] (plain HTTP), https://HOST[:PORT] (unverified TLS), or HOST[:PORT]
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Name to store the import under (default: the source's normalized reference), e.g. to
    /// import a local layout as localhost/ignite-kernel:6.1
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an object of that name whose content differs from the source's (VMs made from
    /// the old content keep it); without it, other content under the name is refused
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GitopsArgs {
    /// Repository URL
    pub repo: String,
    /// What branch to sync (default: the repository's default branch)
    #[arg(short = 'b', long)]
    pub branch: Option<String>,
    /// What subdirectories to care about (default: the whole repository)
    #[arg(short = 'p', long, value_delimiter = ',')]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also release what killed processes left behind: networks of VMs that are not running,
    /// sockets of dead supervisors, scratch and blobs of killed imports
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: PsOutput,
}

#[derive(Debug, Args)]
pub struct RmObjArgs {
    #[arg(required = true)]
    pub objects: Vec<String>,
    /// Also remove the VMs that use it (running ones are stopped first), as Weave Ignite does
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImageCmd {
    #[command(subcommand)]
    pub command: Option<ObjSub>,
    /// Without a subcommand: list (as `ls`)
    #[command(flatten)]
    pub ls: LsArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KernelCmd {
    #[command(subcommand)]
    pub command: Option<ObjSub>,
    /// Without a subcommand: list (as `ls`)
    #[command(flatten)]
    pub ls: LsArgs,
}

#[derive(Debug, Subcommand)]
pub enum ObjSub {
    /// Import from a registry, an archive, an OCI layout (kernels also: a vmlinux file)
    Import(ImportArgs),
    /// List imported objects
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove objects
    Rm(RmObjArgs),
    /// Remove what nothing uses: bases and size classes of removed images that no VM needs,
    /// blobs no image or kernel was made from, temporary files of killed processes
    Prune,
}

#[derive(Debug, Args)]
pub struct VmCmd {
    #[command(subcommand)]
    pub command: VmSub,
}

#[derive(Debug, Subcommand)]
pub enum VmSub {
    Attach(VmArg),
    Cp(CpArgs),
    Create(CreateArgs),
    Exec(ExecArgs),
    Kill(VmsArg),
    Logs(LogsArgs),
    /// List running VMs (-a: all)
    Ps(PsArgs),
    /// List all VMs (as Weave Ignite's `vm ls`, `vm list`)
    #[command(visible_alias = "list")]
    Ls(PsArgs),
    Rm(RmArgs),
    Run(RunArgs),
    Ssh(SshArgs),
    Start(StartArgs),
    Stop(StopArgs),
    Inspect(VmInspectArgs),
}

#[derive(Debug, Args)]
pub struct VmInspectArgs {
    pub object: String,
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: ObjOutput,
    #[arg(short, long)]
    pub template: Option<String>,
}
