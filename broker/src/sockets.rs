//! Sockets the broker listens with, shared by the Kafka listeners (`server`) and the
//! broker-to-broker transport (`cluster::transport`).

use std::net::SocketAddr;

/// A listener on `address` with `SO_REUSEPORT` (so every shard listens on the same Kafka
/// port, and a listener restarted in the same process binds before the old one's close
/// completes) plus `SO_REUSEADDR`. Accepted connections inherit the flag, so what they leave
/// in `TIME_WAIT` after a restart (even after SIGKILL) does not make `preflight`'s probes
/// report the port as taken, while a live listener or connection on it still does. Call it
/// on the executor that will accept.
pub(crate) fn reusable_listener(address: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::IntoRawFd;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves to the
    // glommio listener (into_raw_fd gives it up here).
    Ok(unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd())
    })
}
