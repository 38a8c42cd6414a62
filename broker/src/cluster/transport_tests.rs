//! Guards the transport's contract on real loopback sockets: frames arrive whole and counted
//! both ways, a peer that starts late is reached by reconnecting, a full queue drops and
//! counts instead of waiting, and a connection sending a bad frame is closed. With mutual TLS:
//! brokers exchange frames, and a trusted certificate that is not a broker's, or plaintext,
//! is refused before any frame is taken.

use std::io::{Read, Write};

use raft::eraftpb::{Entry, Message, MessageType};

use super::*;

fn settings(node_id: u64) -> TransportSettings {
    TransportSettings {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..TransportSettings::new(node_id, 1)
    }
}

fn frame(from: u64, to: u64, sequence: u64) -> Frame {
    let mut frame = Frame::new(from, to, 1);
    frame.push(
        sequence % 3,
        Message {
            msg_type: MessageType::MsgAppend as i32,
            from,
            to,
            term: 3,
            index: sequence,
            entries: vec![Entry {
                term: 3,
                index: sequence + 1,
                data: vec![u8::try_from(sequence % 251).unwrap(); 100].into(),
                ..Entry::default()
            }],
            ..Message::default()
        },
    );
    frame
}

/// A port nobody listens on now (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn receive(inbound: &LocalReceiver<Frame>, count: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    while frames.len() < count {
        let next =
            glommio::timer::timeout(Duration::from_secs(5), async { Ok(inbound.recv().await) })
                .await
                .expect("a frame within 5 s");
        frames.push(next.expect("channel open"));
    }
    frames
}

/// Node 1's transport on a port of its own, its one peer (node 2) at a port nobody listens
/// on, and what it receives. Call it on an executor.
fn alone(settings: TransportSettings) -> (Rc<Transport>, LocalReceiver<Frame>) {
    let (to_a, at_a) = local_channel::new_bounded(64);
    let peers = BTreeMap::from([(2, format!("127.0.0.1:{}", free_port()))]);
    let a = Transport::start(settings, loopback(0), &peers, to_a).unwrap();
    (a, at_a)
}

/// Two transports on loopback, each the other's only peer, and what each receives.
struct Pair {
    a: Rc<Transport>,
    at_a: LocalReceiver<Frame>,
    b: Rc<Transport>,
    at_b: LocalReceiver<Frame>,
}

/// Starts A with `settings_a` and B with `settings_b` (node ids 1 and 2). Call it on an
/// executor.
fn pair(settings_a: TransportSettings, settings_b: TransportSettings) -> Pair {
    let (port_a, port_b) = (free_port(), free_port());
    let (to_a, at_a) = local_channel::new_bounded(64);
    let (to_b, at_b) = local_channel::new_bounded(64);
    let peers_a = BTreeMap::from([(2, format!("127.0.0.1:{port_b}"))]);
    let peers_b = BTreeMap::from([(1, format!("127.0.0.1:{port_a}"))]);
    let a = Transport::start(settings_a, loopback(port_a), &peers_a, to_a).unwrap();
    let b = Transport::start(settings_b, loopback(port_b), &peers_b, to_b).unwrap();
    Pair { a, at_a, b, at_b }
}

fn run(
    test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) {
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn frames_cross_both_ways_in_order_and_are_counted() {
    run(|| {
        Box::pin(async {
            let Pair { a, at_a, b, at_b } = pair(settings(1), settings(2));
            let sent: Vec<Frame> = (0..50).map(|sequence| frame(1, 2, sequence)).collect();
            for frame in &sent {
                assert!(a.send(frame));
            }
            assert!(b.send(&frame(2, 1, 99)));
            assert_eq!(receive(&at_b, 50).await, sent);
            assert_eq!(receive(&at_a, 1).await, vec![frame(2, 1, 99)]);
            let (counts_a, counts_b) = (a.counts(), b.counts());
            assert_eq!(counts_a.frames_sent, 50);
            assert_eq!(counts_b.frames_received, 50);
            assert_eq!(counts_a.bytes_sent, counts_b.bytes_received);
            let encoded: usize = sent.iter().map(Frame::encoded_size).sum();
            assert_eq!(counts_a.bytes_sent, encoded as u64);
            assert_eq!(counts_a.connections_opened, 1);
            assert_eq!(counts_a.frames_dropped_queue_full, 0);
            // No peer 7: dropped and counted, not queued anywhere.
            assert!(!a.send(&frame(1, 7, 0)));
            assert_eq!(a.counts().frames_dropped_unknown_peer, 1);
        })
    });
}

#[test]
fn a_peer_that_starts_late_is_reached_by_reconnecting() {
    run(|| {
        Box::pin(async {
            let (port_a, port_b) = (free_port(), free_port());
            let (to_a, _at_a) = local_channel::new_bounded(64);
            let (to_b, at_b) = local_channel::new_bounded(64);
            let peers_a = BTreeMap::from([(2, format!("127.0.0.1:{port_b}"))]);
            let a = Transport::start(settings(1), loopback(port_a), &peers_a, to_a).unwrap();
            assert!(a.send(&frame(1, 2, 1)));
            glommio::timer::sleep(Duration::from_millis(60)).await;
            assert!(a.counts().connection_failures >= 2, "{:?}", a.counts());
            let peers_b = BTreeMap::from([(1, format!("127.0.0.1:{port_a}"))]);
            let _b = Transport::start(settings(2), loopback(port_b), &peers_b, to_b).unwrap();
            // The frame queued while B was down arrives once A's backoff lets it reconnect.
            assert_eq!(receive(&at_b, 1).await, vec![frame(1, 2, 1)]);
            assert_eq!(a.counts().connections_opened, 1);
        })
    });
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    run(|| {
        Box::pin(async {
            let one_frame = frame(1, 2, 0).encoded_size();
            let small = TransportSettings {
                send_queue_bytes_max: 3 * one_frame,
                ..settings(1)
            };
            // Nobody listens on the peer's port: everything stays queued.
            let (a, _at_a) = alone(small);
            let queued = (0..10).filter(|_| a.send(&frame(1, 2, 0))).count();
            assert_eq!(queued, 3);
            assert_eq!(a.counts().frames_dropped_queue_full, 7);
        })
    });
}

#[test]
fn bad_frames_close_the_connection_before_their_body_is_buffered() {
    run(|| {
        Box::pin(async {
            let (a, at_a) = alone(settings(1));
            let address = a.local_address();
            let mut good = BytesMut::new();
            frame(2, 1, 5).encode(&mut good);
            let mut oversized = good.to_vec();
            oversized[..4].copy_from_slice(&u32::MAX.to_be_bytes());
            let mut bad_version = good.to_vec();
            bad_version[4..6].copy_from_slice(&9_u16.to_be_bytes());
            let mut misaddressed = BytesMut::new();
            frame(2, 3, 5).encode(&mut misaddressed);
            let cases = [oversized, bad_version, misaddressed.to_vec()];
            let case_count = cases.len() as u64;
            // Blocking sockets on a helper thread, so the executor keeps serving.
            let client = std::thread::spawn(move || {
                for bytes in cases {
                    let mut socket = std::net::TcpStream::connect(address).unwrap();
                    socket.write_all(&good).unwrap();
                    socket.write_all(&bytes).unwrap();
                    let mut rest = Vec::new();
                    // The broker closes its side: read ends (0 bytes, or reset).
                    let _ = socket.read_to_end(&mut rest);
                    assert!(rest.is_empty());
                }
            });
            // Each connection's good frame arrives before the bad one closes it.
            let received = receive(&at_a, 3).await;
            assert!(received.iter().all(|frame| frame.from_node == 2));
            while !client.is_finished() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            client.join().unwrap();
            assert_eq!(a.counts().connections_refused_bad_frame, case_count);
            assert_eq!(a.counts().frames_received, 3);
        })
    });
}

/// PEM fixtures: a CA, and two certificates it signed (both names `localhost` and
/// 127.0.0.1, both usable as client and server): `CN=broker`, the principal of
/// `super.users` here, and `CN=alice`, trusted but not a broker.
fn peer_tls(keystore: &str) -> std::sync::Arc<PeerTls> {
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cluster/testdata");
    let settings = crate::tls::TlsSettings {
        keystore_location: format!("{testdata}/{keystore}-keystore.pem"),
        truststore_location: format!("{testdata}/ca.pem"),
        principal_mapping_rules: "DEFAULT".into(),
        ..crate::tls::TlsSettings::default()
    };
    let mapper = std::sync::Arc::new(crate::tls::PrincipalMapper::parse("DEFAULT").unwrap());
    std::sync::Arc::new(PeerTls::new(&settings, mapper, &["User:CN=broker".to_string()]).unwrap())
}

fn with_tls(node_id: u64, keystore: &str) -> TransportSettings {
    TransportSettings {
        tls: Some(peer_tls(keystore)),
        ..settings(node_id)
    }
}

#[test]
fn brokers_exchange_frames_over_mutual_tls() {
    run(|| {
        Box::pin(async {
            let Pair { a, at_a, b, at_b } = pair(with_tls(1, "broker"), with_tls(2, "broker"));
            let sent: Vec<Frame> = (0..20).map(|sequence| frame(1, 2, sequence)).collect();
            for frame in &sent {
                assert!(a.send(frame));
            }
            assert!(b.send(&frame(2, 1, 7)));
            // Frames written into the TLS session arrive without more traffic behind them:
            // the writer flushes when its queue runs dry.
            assert_eq!(receive(&at_b, 20).await, sent);
            assert_eq!(receive(&at_a, 1).await, vec![frame(2, 1, 7)]);
            assert_eq!(a.counts().connections_opened, 1);
            assert_eq!(b.counts().connections_refused_unauthenticated, 0);
        })
    });
}

#[test]
fn a_trusted_certificate_that_is_not_a_brokers_and_plaintext_are_refused() {
    run(|| {
        Box::pin(async {
            // A holds alice's certificate: the CA signed it, but alice is no broker.
            let Pair { a, b, .. } = pair(with_tls(1, "alice"), with_tls(2, "broker"));
            assert!(a.send(&frame(1, 2, 1)));
            // Something speaking plaintext frames to B's TLS port.
            let mut good = BytesMut::new();
            frame(1, 2, 2).encode(&mut good);
            let address = b.local_address();
            let plaintext = std::thread::spawn(move || {
                let mut socket = std::net::TcpStream::connect(address).unwrap();
                let _ = socket.write_all(&good);
                let mut rest = Vec::new();
                let _ = socket.read_to_end(&mut rest);
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !plaintext.is_finished() || b.counts().connections_refused_unauthenticated < 2 {
                assert!(std::time::Instant::now() < deadline, "{:?}", b.counts());
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            plaintext.join().unwrap();
            // B refused the plaintext peer and alice (A may have counted its side as opened:
            // in TLS 1.3 the client finishes before the server judges its certificate). No
            // frame reached B.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!(b.counts().frames_received, 0);
        })
    });
}

#[test]
fn a_connection_to_its_own_address_is_told_apart() {
    let a = loopback(40_001);
    let b = loopback(40_002);
    assert!(is_self_connection(Some(a), Some(a)));
    assert!(!is_self_connection(Some(a), Some(b)));
    assert!(
        !is_self_connection(None, Some(a)),
        "unknown ends are not judged"
    );
}

#[test]
fn idle_peers_keep_each_other_live_with_empty_frames_and_a_stopped_one_is_not_live() {
    run(|| {
        Box::pin(async {
            let Pair { a, at_a, b, at_b } = pair(settings(1), settings(2));
            assert!(a.live_peers().is_empty(), "nothing heard yet");
            let told: Rc<RefCell<Vec<LivePeers>>> = Rc::default();
            let sink = told.clone();
            a.set_liveness_listener(Box::new(move |live| sink.borrow_mut().push(live.clone())));
            assert_eq!(*told.borrow(), [LivePeers::new()], "told at once");
            // No frame is queued either way: only keepalives cross.
            let deadline = Instant::now() + Duration::from_secs(5);
            while a.live_peers() != LivePeers::from([(2, 0)])
                || b.live_peers() != LivePeers::from([(1, 0)])
            {
                assert!(
                    Instant::now() < deadline,
                    "{:?} {:?}",
                    a.counts(),
                    b.counts()
                );
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            glommio::timer::sleep(3 * KEEPALIVE_INTERVAL).await;
            let (counts_a, counts_b) = (a.counts(), b.counts());
            assert!(counts_a.keepalives_sent >= 2, "{counts_a:?}");
            assert!(counts_b.keepalives_received >= 2, "{counts_b:?}");
            assert_eq!((counts_a.frames_sent, counts_b.frames_received), (0, 0));
            assert_eq!(counts_a.peers_live, 1);
            // Keepalives are not frames for the driver: none waits in either channel.
            for inbound in [&at_a, &at_b] {
                let waiting = glommio::timer::timeout(Duration::from_millis(20), async {
                    Ok(inbound.recv().await)
                })
                .await;
                assert!(waiting.is_err(), "a keepalive reached the driver");
            }
            // A frame of the driver's resets the idle wait and still arrives alone.
            assert!(a.send(&frame(1, 2, 5)));
            assert_eq!(receive(&at_b, 1).await, vec![frame(1, 2, 5)]);

            b.stop();
            drop(b);
            let stopped = Instant::now();
            while !a.live_peers().is_empty() {
                assert!(
                    stopped.elapsed() < LIVENESS_TIMEOUT + 4 * KEEPALIVE_INTERVAL,
                    "a stopped peer stays live"
                );
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            assert!(stopped.elapsed() + 2 * KEEPALIVE_INTERVAL >= LIVENESS_TIMEOUT);
            assert_eq!(a.counts().peers_live, 0);
            // Told each change once, in order (the check after `a.live_peers()` emptied
            // has run: it is what empties it).
            assert_eq!(
                *told.borrow(),
                [
                    LivePeers::new(),
                    LivePeers::from([(2, 0)]),
                    LivePeers::new()
                ]
            );
        })
    });
}

#[test]
fn a_silent_inbound_connection_is_closed_after_three_seconds_between_frames_or_inside_one() {
    run(|| {
        Box::pin(async {
            let (a, _at_a) = alone(settings(1));
            let address = a.local_address();
            let mut frame_start = BytesMut::new();
            frame(2, 1, 3).encode(&mut frame_start);
            frame_start.truncate(FRAME_LENGTH_BYTES + 10);
            // Peers whose link went dead: connected, then nothing (not even a FIN), before
            // a frame or partway through one.
            let silent = [Vec::new(), frame_start.to_vec()].map(|sent| {
                std::thread::spawn(move || {
                    let mut socket = std::net::TcpStream::connect(address).unwrap();
                    socket.write_all(&sent).unwrap();
                    let opened = std::time::Instant::now();
                    let mut rest = Vec::new();
                    let _ = socket.read_to_end(&mut rest);
                    opened.elapsed()
                })
            });
            let deadline = Instant::now() + INBOUND_SILENCE_MAX + Duration::from_secs(5);
            while !silent.iter().all(std::thread::JoinHandle::is_finished) {
                assert!(Instant::now() < deadline, "a silent connection stayed open");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            for connection in silent {
                let open_for = connection.join().unwrap();
                assert!(open_for >= INBOUND_SILENCE_MAX, "closed after {open_for:?}");
            }
            assert_eq!(a.counts().frames_received, 0);
        })
    });
}

/// A peer heard in a newer incarnation restarted (faster than the liveness timeout, or it
/// would have gone and come); a late frame of its old incarnation changes nothing.
#[test]
fn a_peer_heard_in_a_newer_incarnation_counts_as_restarted_and_an_older_one_as_nothing() {
    let liveness = Liveness::default();
    let told: Rc<RefCell<Vec<LivePeers>>> = Rc::default();
    let sink = told.clone();
    *liveness.listener.borrow_mut() = Some(Box::new(move |live: &LivePeers| {
        sink.borrow_mut().push(live.clone());
    }));
    liveness.heard(2, 7);
    liveness.heard(3, 1);
    let changes = liveness.check(Instant::now());
    assert_eq!((changes.came, changes.restarted), (vec![2, 3], vec![]));
    liveness.heard(2, 8);
    liveness.heard(2, 7);
    let changes = liveness.check(Instant::now());
    assert_eq!(
        changes,
        LivenessChanges {
            restarted: vec![2],
            ..LivenessChanges::default()
        }
    );
    assert!(liveness.check(Instant::now()).is_empty());
    assert_eq!(
        *told.borrow(),
        [
            LivePeers::from([(2, 7), (3, 1)]),
            LivePeers::from([(2, 8), (3, 1)])
        ]
    );
    let later = Instant::now() + LIVENESS_TIMEOUT;
    assert_eq!(liveness.check(later).went, vec![2, 3]);
}

/// A writer's connection gives unacknowledged bytes up after `UNACKNOWLEDGED_TIMEOUT`: the
/// option the kernel reports back is the one set.
#[test]
fn a_peer_connection_carries_the_unacknowledged_timeout() {
    run(|| {
        Box::pin(async {
            use std::os::fd::{AsRawFd, BorrowedFd};
            let listener = std::net::TcpListener::bind(loopback(0)).unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            set_unacknowledged_timeout(&stream, UNACKNOWLEDGED_TIMEOUT);
            // SAFETY: the stream is open for the whole borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            let set = socket2::SockRef::from(&fd).tcp_user_timeout().unwrap();
            assert_eq!(set, Some(UNACKNOWLEDGED_TIMEOUT));
        })
    });
}
