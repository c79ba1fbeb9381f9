//! The mesh core on the host: byte streams split at every point decode to the same messages,
//! hellos name the sender, bad bytes close only their stream, broken streams are redialled
//! after the delay and resume on a frame boundary.

use gfs::wire::{encode_frame_of, encode_hello, FrameError, NodeId};
use mesh::{Dial, Entropy, MeshCore, StreamId, REDIAL_DELAY_NS, SETUP_TIMEOUT_NS};
use proptest::prelude::*;

struct Fixed(u64);

impl Entropy for Fixed {
    fn random_u64(&mut self) -> u64 {
        self.0
    }
}

/// A core for node `me` whose messages are byte strings.
fn core(me: NodeId, dialled: &[NodeId]) -> MeshCore<Vec<u8>> {
    let decode = Box::new(|_: NodeId, bytes: &[u8]| gfs::wire::decode_frame_of::<Vec<u8>>(bytes));
    MeshCore::new(me, dialled, 4096, decode, &mut Fixed(7))
}

/// What a dialler from `from` sends: its hello, then `messages` as frames.
fn stream_bytes(from: NodeId, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = encode_hello(from);
    for message in messages {
        bytes.extend(encode_frame_of(message));
    }
    bytes
}

/// Feeds `bytes` to an accepted stream in pieces cut at `cuts`; returns what was decoded.
fn feed(
    core: &mut MeshCore<Vec<u8>>,
    stream: StreamId,
    bytes: &[u8],
    cuts: &[usize],
) -> Vec<(NodeId, Vec<u8>)> {
    let mut inbox = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        core.received(stream, &bytes[start..cut], 0, &mut inbox);
        start = cut;
    }
    inbox
}

fn messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6)
}

#[test]
fn a_stream_split_at_every_point_decodes_the_same() {
    let sent = vec![b"first".to_vec(), vec![0; 700], b"third".to_vec()];
    let bytes = stream_bytes(9, &sent);
    let want: Vec<(NodeId, Vec<u8>)> = sent.iter().map(|message| (9, message.clone())).collect();
    for cut in 0..=bytes.len() {
        let mut mesh = core(1, &[]);
        mesh.accepted(5, 0);
        assert_eq!(feed(&mut mesh, 5, &bytes, &[cut]), want, "cut at {cut}");
        assert!(mesh.take_closed().is_empty(), "cut at {cut}");
    }
}

proptest! {
    #[test]
    fn any_split_decodes_the_same(sent in messages(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let bytes = stream_bytes(3, &sent);
        let mut mesh = core(1, &[]);
        mesh.accepted(8, 0);
        let got = feed(&mut mesh, 8, &bytes, &cuts);
        let want: Vec<(NodeId, Vec<u8>)> = sent.into_iter().map(|message| (3, message)).collect();
        prop_assert_eq!(got, want);
        prop_assert!(mesh.take_closed().is_empty());
    }

    #[test]
    fn a_flipped_byte_closes_only_that_stream(sent in messages(), at in any::<usize>(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut bytes = stream_bytes(3, &sent);
        let at = at % bytes.len();
        bytes[at] ^= 0x40;
        let mut mesh = core(1, &[]);
        mesh.accepted(8, 0);
        mesh.accepted(9, 0);
        let good = stream_bytes(4, &[b"fine".to_vec()]);
        let got = feed(&mut mesh, 8, &bytes, &cuts);
        // Whatever was decoded before the flipped byte is the sender's, in order.
        prop_assert!(got.len() <= sent.len());
        for ((from, message), original) in got.iter().zip(&sent) {
            prop_assert_eq!(*from, 3);
            prop_assert_eq!(message, original);
        }
        prop_assert_eq!(feed(&mut mesh, 9, &good, &[]), vec![(4, b"fine".to_vec())]);
        prop_assert!(!mesh.take_closed().contains(&9));
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut mesh = core(1, &[]);
        mesh.accepted(8, 0);
        let _ = feed(&mut mesh, 8, &bytes, &cuts);
        let closed = mesh.take_closed();
        prop_assert!(closed.len() <= 1);
    }
}

#[test]
fn a_stream_without_a_hello_is_refused() {
    let mut mesh = core(1, &[]);
    mesh.accepted(8, 0);
    let got = feed(&mut mesh, 8, &encode_frame_of(&b"no hello".to_vec()), &[]);
    assert!(got.is_empty());
    assert_eq!(mesh.take_closed(), vec![8]);
}

#[test]
fn an_oversized_frame_closes_the_stream() {
    let mut mesh = core(1, &[]);
    mesh.accepted(8, 0);
    let got = feed(&mut mesh, 8, &stream_bytes(3, &[vec![1; 5000]]), &[]);
    assert!(got.is_empty());
    assert_eq!(mesh.take_closed(), vec![8]);
}

#[test]
fn a_silent_accepted_stream_times_out() {
    let mut mesh = core(1, &[]);
    mesh.accepted(8, 0);
    mesh.check_timeouts(SETUP_TIMEOUT_NS - 1);
    assert!(mesh.take_closed().is_empty());
    mesh.check_timeouts(SETUP_TIMEOUT_NS);
    assert_eq!(mesh.take_closed(), vec![8]);
}

#[test]
fn a_second_hello_replaces_the_older_stream() {
    let mut mesh = core(1, &[]);
    mesh.accepted(8, 0);
    feed(&mut mesh, 8, &encode_hello(3), &[]);
    mesh.accepted(9, 10);
    let got = feed(&mut mesh, 9, &stream_bytes(3, &[b"again".to_vec()]), &[]);
    assert_eq!(got, vec![(3, b"again".to_vec())]);
    assert_eq!(mesh.take_closed(), vec![8]);
    mesh.send(3, encode_frame_of(&b"reply".to_vec()));
    assert!(mesh.next_write(9).is_some());
    assert!(mesh.next_write(8).is_none());
}

/// Writes everything `mesh` has for `stream`, at most `max` bytes a call.
fn drain_writes(mesh: &mut MeshCore<Vec<u8>>, stream: StreamId, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = mesh.next_write(stream) {
        let take = bytes.len().min(max);
        out.extend_from_slice(&bytes[..take]);
        mesh.wrote(stream, take);
    }
    out
}

#[test]
fn the_dialler_says_hello_first_and_redials_after_the_delay() {
    let mut mesh = core(5, &[2, 9]);
    // Only the lower id is dialled.
    let dials = mesh.dials_due(0);
    assert_eq!(dials.iter().map(|dial| dial.node).collect::<Vec<_>>(), vec![2]);
    let Dial { node, .. } = dials[0];
    mesh.dialled(node, 40, 0);
    mesh.send(2, encode_frame_of(&b"hi".to_vec()));
    let written = drain_writes(&mut mesh, 40, 3);
    let mut receiver = core(2, &[]);
    receiver.accepted(1, 0);
    assert_eq!(feed(&mut receiver, 1, &written, &[]), vec![(5, b"hi".to_vec())]);
    // The stream breaks: no dial before the delay, one after.
    mesh.gone(40, 1_000);
    assert_eq!(mesh.take_closed(), vec![40]);
    assert!(mesh.dials_due(1_000 + REDIAL_DELAY_NS - 1).is_empty());
    assert_eq!(mesh.dials_due(1_000 + REDIAL_DELAY_NS).len(), 1);
    assert_eq!(mesh.wake_at_ns(), Some(1_000 + 2 * REDIAL_DELAY_NS));
}

#[test]
fn a_frame_cut_by_a_broken_stream_is_dropped_and_the_next_stream_starts_on_a_boundary() {
    let mut mesh = core(5, &[2]);
    mesh.dials_due(0);
    mesh.dialled(2, 40, 0);
    mesh.established(40);
    for text in ["one", "two", "three"] {
        mesh.send(2, encode_frame_of(&text.as_bytes().to_vec()));
    }
    // The hello and part of the first frame go out, then the stream breaks.
    let hello_bytes = encode_hello(5).len();
    let first = mesh.next_write(40).unwrap().len();
    assert_eq!(first, hello_bytes);
    mesh.wrote(40, first);
    mesh.wrote(40, 3);
    mesh.gone(40, 0);
    assert_eq!(mesh.stats.messages_dropped, 1);
    assert_eq!(mesh.take_log(), vec!["stream to node 2 up", "stream to node 2 lost"]);
    mesh.dials_due(REDIAL_DELAY_NS);
    mesh.dialled(2, 41, REDIAL_DELAY_NS);
    let written = drain_writes(&mut mesh, 41, 1000);
    let mut receiver = core(2, &[]);
    receiver.accepted(1, 0);
    let got = feed(&mut receiver, 1, &written, &[]);
    assert_eq!(got, vec![(5, b"two".to_vec()), (5, b"three".to_vec())]);
}

#[test]
fn a_dialled_stream_that_never_comes_up_is_given_up() {
    let mut mesh = core(5, &[2]);
    mesh.dials_due(0);
    mesh.dialled(2, 40, 0);
    mesh.check_timeouts(SETUP_TIMEOUT_NS);
    assert_eq!(mesh.take_closed(), vec![40]);
    // Not reported as lost: it never came up.
    assert!(mesh.take_log().is_empty());
}

#[test]
fn decoder_errors_other_than_incomplete_close_the_stream() {
    let decode = Box::new(|_: NodeId, _: &[u8]| Err::<(Vec<u8>, usize), _>(FrameError::Decode));
    let mut mesh: MeshCore<Vec<u8>> = MeshCore::new(1, &[], 4096, decode, &mut Fixed(0));
    mesh.accepted(8, 0);
    let got = feed(&mut mesh, 8, &stream_bytes(3, &[b"x".to_vec()]), &[]);
    assert!(got.is_empty());
    assert_eq!(mesh.take_closed(), vec![8]);
}
