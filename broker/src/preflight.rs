//! Start-up checks that turn the host problems an operator can fix into one clear message
//! (what is wrong, what to do) before any shard starts: the Kafka port held by another
//! process, a data directory the broker cannot write, `io_uring` blocked or missing, and too
//! little lockable memory. Each returns `Err(message)`; `main` prints it and exits non-zero.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::settings;

/// Locked memory one shard needs so glommio can register its `io_uring` buffers. Measured
/// (kernel 6.18, glommio 0.9, `io_memory` 1 MiB, without `CAP_IPC_LOCK`) with
/// `prlimit --memlock=N setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock ringfeed serve`:
/// one shard registers its buffers at 4 MiB and not at 3 MiB; two shards at 8 MiB and not at
/// 6 MiB. Below it the broker still runs, with unregistered buffers (glommio prints
/// "registering buffers ... failed").
pub const SHARD_LOCKED_MEMORY_BYTES: u64 = 4 << 20;

/// glommio refuses to start an executor below this `RLIMIT_MEMLOCK` (its `MemLockLimit`
/// error), whatever the shard count.
const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// The address to listen on: port 0 resolved to a free port, a fixed port refused (with what
/// to do) if another process listens on it. A plain socket with `SO_REUSEADDR` and without `SO_REUSEPORT` cannot bind a
/// port on which any socket listens, with or without `SO_REUSEPORT`, so a second ringfeed,
/// which would otherwise join the first one's `SO_REUSEPORT` group, is caught; with
/// `SO_REUSEADDR` on both sides (`sockets::reusable_listener` sets it, and accepted connections
/// inherit it) a previous run's connections in `TIME_WAIT` do not block the bind, so a
/// restart on the same port is not refused. A port still held is probed again for
/// `DEAD_LISTENER_GRACE`, the time a killed broker's listener takes to disappear.
///
/// A port 0 is resolved by a probe bound to it, which `claims` keeps open until the caller
/// drops it: the next port-0 claim of this start is then given another port. (With each
/// probe closed at once, the Kafka listener and the admin listener, both on port 0, were
/// once given the same port, and the second to listen failed with "address in use".)
pub fn claim_port(
    address: SocketAddr,
    key: &str,
    claims: &mut PortClaims,
) -> Result<SocketAddr, String> {
    if address.port() == 0 {
        let (resolved, probe) = free_port(address)?;
        claims.probes.push(probe);
        return Ok(resolved);
    }
    let setting = settings::setting(key);
    match probe_with_grace(address, PortSharing::None) {
        Ok(()) => Ok(address),
        Err(error) if error.kind() == ErrorKind::AddrInUse => Err(format!(
            "{key} {address}: the port is already in use by another process (another ringfeed \
             or a Kafka broker?). Stop that process, or pick another port: --{flag} HOST:PORT, \
             {env}=HOST:PORT or {key} in the config file (port 0 picks a free port). \
             `ss -ltnp 'sport = :{port}'` shows who holds it.",
            flag = setting.flag(),
            env = setting.env_name(),
            port = address.port(),
        )),
        Err(error) if error.kind() == ErrorKind::PermissionDenied => Err(format!(
            "{key} {address}: not permitted to bind ({error}). Ports below 1024 need root or \
             CAP_NET_BIND_SERVICE; pick a port >= 1024."
        )),
        Err(error) => Err(format!(
            "{key} {address}: cannot bind ({error}). Is the address one of this host's?"
        )),
    }
}

/// This broker's internal (broker-to-broker) address from `controller.quorum.voters`,
/// refused with what to do when another process holds its port. Claimed with the listeners,
/// before any shard starts: the transport binds it on shard 0 later, and a bind failing
/// there once left the broker waiting for that shard, silently, until the test that
/// started it gave up (a voter port picked free by a test, then taken by an outbound
/// connection's ephemeral port before the broker bound it).
///
/// The probe sets `SO_REUSEPORT` as the transport's listener does: a listener of a binary
/// before stop 35 left its accepted connections' `TIME_WAIT` without `SO_REUSEADDR`, which a
/// probe without `SO_REUSEPORT` counts as taken, so a restart just after an upgrade would be
/// refused. The cost: another ringfeed's transport listener (same user, `SO_REUSEPORT`) is
/// not seen, as it was not before this check existed; a connection or any other listener is.
pub fn claim_internal_port(address: SocketAddr) -> Result<(), String> {
    match probe_with_grace(address, PortSharing::ReusePort) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::AddrInUse => Err(format!(
            "controller.quorum.voters: this broker's internal address {address} is already in \
             use by another process (another ringfeed, or a connection given that port as its \
             ephemeral source port: internal ports are best kept outside \
             net.ipv4.ip_local_port_range). `ss -tanp 'sport = :{port}'` shows who holds it.",
            port = address.port(),
        )),
        Err(error) => Err(format!(
            "controller.quorum.voters: cannot bind this broker's internal address {address} \
             ({error}). Is the address one of this host's?"
        )),
    }
}

/// Binds a probe to `address`, again and again for `DEAD_LISTENER_GRACE` while the port is
/// in use, and returns the last outcome.
fn probe_with_grace(address: SocketAddr, sharing: PortSharing) -> std::io::Result<()> {
    let deadline = Instant::now() + DEAD_LISTENER_GRACE;
    loop {
        let outcome = bind_probe(address, sharing);
        let in_use = matches!(&outcome, Err(error) if error.kind() == ErrorKind::AddrInUse);
        if !in_use || Instant::now() >= deadline {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a port may stay held after its listener's process died. The listening socket of
/// a broker killed with SIGKILL outlives it until the kernel tears down its `io_uring`
/// (measured: 7-23 ms here), so an immediate restart would otherwise be refused.
const DEAD_LISTENER_GRACE: Duration = Duration::from_secs(2);

/// Resolves port 0 to a port nobody holds. A port-0 bind with `SO_REUSEPORT` may be given a
/// port another process's `SO_REUSEPORT` group already listens on (seen here: a second broker
/// joined a running one and the kernel split clients between two brokers with different
/// logs); a plain bind (without `SO_REUSEPORT`) is given a free port.
fn free_port(address: SocketAddr) -> Result<(SocketAddr, socket2::Socket), String> {
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|error| error.to_string())?;
    probe
        .bind(&address.into())
        .map_err(|error| format!("cannot bind {address}: {error}"))?;
    let resolved = probe
        .local_addr()
        .ok()
        .and_then(|claimed| claimed.as_socket())
        .ok_or_else(|| format!("cannot read the address bound for {address}"))?;
    Ok((resolved, probe))
}

/// The probes holding the ports that port-0 claims resolved to (see [`claim_port`]). Drop it
/// once every claim of the start is made, before binding the listeners (the probes hold
/// their ports without `SO_REUSEPORT`, so no listener could bind them).
#[derive(Default)]
pub struct PortClaims {
    probes: Vec<socket2::Socket>,
}

/// What a probe shares its port with besides `TIME_WAIT` (`SO_REUSEADDR` is always set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortSharing {
    None,
    /// `SO_REUSEPORT` too: the listeners of this user that set it do not count as taken.
    ReusePort,
}

fn bind_probe(address: SocketAddr, sharing: PortSharing) -> std::io::Result<()> {
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    probe.set_reuse_address(true)?;
    if sharing == PortSharing::ReusePort {
        probe.set_reuse_port(true)?;
    }
    probe.bind(&address.into())
}

/// Creates the data directory if needed and proves the broker can create, write and
/// remove a file in it. Root ignores permission bits, so this catches what bits cannot
/// show: read-only mounts, immutable directories, a path through a file.
///
/// A full disk is not a reason to refuse: the broker starts, serves what it holds and answers
/// producers `KAFKA_STORAGE_ERROR` until space is freed, so restarting on a full disk works.
/// That case returns the warning to log.
pub fn check_data_dir_writable(data_dir: &Path) -> Result<Option<String>, String> {
    let fix = "Give the broker's user write access to it, or point log.dirs elsewhere \
               (--log-dirs DIR, RINGFEED_LOG_DIRS or log.dirs in the config file).";
    let explain = |what: &str, error: &std::io::Error| {
        let why = match error.raw_os_error() {
            Some(libc::EROFS) => " (the file system is mounted read-only)",
            Some(libc::EPERM) => " (the directory may be immutable: see lsattr -d)",
            Some(libc::ENOTDIR) => " (a part of the path is a file, not a directory)",
            Some(libc::EACCES) => " (permission denied for the broker's user)",
            _ => "",
        };
        format!(
            "data dir {} is not usable: {what}: {error}{why}. {fix}",
            data_dir.display()
        )
    };
    let full_warning = |error: &std::io::Error| {
        format!(
            "data dir {} is full ({error}): the broker starts and serves what it holds, and \
             producers get KAFKA_STORAGE_ERROR until space is freed",
            data_dir.display()
        )
    };
    std::fs::create_dir_all(data_dir).map_err(|error| explain("cannot create it", &error))?;
    let probe = data_dir.join(".ringfeed-write-check");
    let written = std::fs::write(&probe, b"ringfeed");
    // Created but not written (a full disk) still leaves the file behind.
    let removed = std::fs::remove_file(&probe);
    match written {
        Err(error) if crate::storage::error::is_no_space(&error) => {
            return Ok(Some(full_warning(&error)))
        }
        Err(error) => return Err(explain("cannot write a file in it", &error)),
        Ok(()) => {}
    }
    removed.map_err(|error| explain("cannot remove a file in it", &error))?;
    Ok(None)
}

/// Sets up and drops a small `io_uring`, so a kernel or sandbox without it stops the broker
/// with a reason instead of failing inside every shard.
pub fn check_io_uring() -> Result<(), String> {
    let Err(error) = io_uring::IoUring::new(8) else {
        return Ok(());
    };
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|text| text.trim().to_string());
    let reason = match (error.raw_os_error(), disabled.as_deref()) {
        (Some(libc::ENOSYS), _) => "the kernel has no io_uring (Linux 5.8 or later with \
             CONFIG_IO_URING is needed)"
            .to_string(),
        (Some(libc::EPERM | libc::EACCES), Some(value)) if value != "0" => format!(
            "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = {value}). \
             Set it to 0 (sysctl -w kernel.io_uring_disabled=0), or with value 1 add the \
             broker's user to the group in kernel.io_uring_group"
        ),
        (Some(libc::EPERM | libc::EACCES), _) => "io_uring_setup is not permitted: a seccomp \
             profile (Docker's and containerd's default ones block io_uring) or a security \
             module denies it. Run the broker with a seccomp profile that allows \
             io_uring_setup, io_uring_enter and io_uring_register (e.g. docker run \
             --security-opt seccomp=PROFILE.json)"
            .to_string(),
        (Some(libc::ENOMEM), _) => "the kernel refused the memory for a ring: raise \
             RLIMIT_MEMLOCK (ulimit -l, systemd LimitMEMLOCK=)"
            .to_string(),
        _ => "io_uring_setup failed".to_string(),
    };
    Err(format!(
        "io_uring is unavailable ({error}): {reason}. Ringfeed does all its IO through \
         io_uring and cannot run without it."
    ))
}

/// Checks `RLIMIT_MEMLOCK` against what `shards` need. Below glommio's own minimum it is an
/// error; below what buffer registration needs, the warning returned goes to the log.
pub fn check_memlock(shards: usize) -> Result<Option<String>, String> {
    if has_capability(CAP_IPC_LOCK) {
        return Ok(None); // io_uring does not charge locked memory to such a process
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } != 0 {
        return Ok(None);
    }
    let current = limit.rlim_cur;
    if current == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let wanted = shards as u64 * SHARD_LOCKED_MEMORY_BYTES;
    let raise = format!(
        "Raise it to at least {wanted_kib} KiB ({SHARD_LOCKED_MEMORY_KIB} KiB per shard): \
         `ulimit -l {wanted_kib}` in the shell that starts the broker, LimitMEMLOCK={wanted} \
         in its systemd unit, `docker run --ulimit memlock={wanted}`, or \
         kernel-tuning/tune.sh apply; or run fewer shards (--shards)",
        wanted_kib = wanted / 1024,
        SHARD_LOCKED_MEMORY_KIB = SHARD_LOCKED_MEMORY_BYTES / 1024,
    );
    if current < GLOMMIO_MEMLOCK_MIN_BYTES {
        return Err(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; io_uring needs at least {} KiB \
             to start a shard. {raise}.",
            current / 1024,
            GLOMMIO_MEMLOCK_MIN_BYTES / 1024
        ));
    }
    if current < wanted {
        return Ok(Some(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, less than {shards} shards need \
             to register their io_uring buffers; they run with unregistered buffers (slower IO). \
             {raise}.",
            current / 1024
        )));
    }
    Ok(None)
}

const CAP_IPC_LOCK: u32 = 14;

/// Whether the process has `capability` in its effective set (from /proc/self/status).
fn has_capability(capability: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << capability) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_with_a_live_reuseport_listener_is_refused_and_a_free_one_is_not() {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener.set_reuse_address(true).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(16).unwrap();
        let taken = listener.local_addr().unwrap().as_socket().unwrap();
        let mut claims = PortClaims::default();
        let error = claim_port(taken, "listeners", &mut claims).unwrap_err();
        assert!(error.contains("already in use"), "{error}");
        assert!(error.contains("--listeners"), "{error}");
        drop(listener);
        assert_eq!(claim_port(taken, "listeners", &mut claims), Ok(taken));
    }

    #[test]
    fn a_port_zero_claim_holds_its_port_until_the_claims_are_dropped() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut claims = PortClaims::default();
        let kafka = claim_port(any, "listeners", &mut claims).unwrap();
        let admin = claim_port(any, "ringfeed.admin.listen", &mut claims).unwrap();
        assert_ne!(kafka.port(), admin.port());
        // Held: nothing else (the kernel's next port-0 pick included) gets it meanwhile.
        let error = bind_probe(kafka, PortSharing::None).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AddrInUse);
        drop(claims);
        bind_probe(kafka, PortSharing::None).unwrap();
        bind_probe(admin, PortSharing::None).unwrap();
    }

    /// The internal port after an upgrade: connections the old transport listener (with
    /// `SO_REUSEPORT` only) accepted and closed first wait in `TIME_WAIT`; the claim must
    /// not count them, while a connection holding the port must be refused.
    #[test]
    fn the_internal_port_claim_passes_time_wait_of_an_old_listener_and_refuses_a_connection() {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let old = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        old.set_reuse_port(true).unwrap();
        old.bind(&loopback.into()).unwrap();
        old.listen(8).unwrap();
        // SAFETY: the descriptor is a bound, listening socket whose ownership moves here.
        let old = unsafe { std::net::TcpListener::from_raw_fd(old.into_raw_fd()) };
        let address = old.local_addr().unwrap();
        let client = std::net::TcpStream::connect(address).unwrap();
        let (accepted, _) = old.accept().unwrap();
        drop(accepted); // the server side closes first: its end waits in TIME_WAIT
        std::thread::sleep(Duration::from_millis(50));
        drop(client);
        drop(old);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            bind_probe(address, PortSharing::None).unwrap_err().kind(),
            ErrorKind::AddrInUse,
            "the case the internal probe is for"
        );
        claim_internal_port(address).unwrap();

        // An outbound connection's source port is taken.
        let target = std::net::TcpListener::bind(loopback).unwrap();
        let holder = std::net::TcpStream::connect(target.local_addr().unwrap()).unwrap();
        let held = holder.local_addr().unwrap();
        let error = bind_probe(held, PortSharing::ReusePort).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AddrInUse);
    }

    #[test]
    fn a_data_dir_under_a_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let error = check_data_dir_writable(&file.join("data")).unwrap_err();
        assert!(error.contains("not a directory"), "{error}");
        assert!(error.contains("log.dirs"), "{error}");
        assert_eq!(check_data_dir_writable(&dir.path().join("data")), Ok(None));
    }
}
