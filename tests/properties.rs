//! Bad input, generated (issue 12 §3): every parser of outside data is fed arbitrary and
//! near-valid input. Nothing panics; every refusal says what was wrong; what is accepted
//! round-trips. (`PROPTEST_CASES` raises the 256 cases each property runs by default.)

use fanout::controller::children::Children;
use fanout::controller::plan::plan;
use fanout::controller::policy::ProxyPolicy;
use fanout::crd::{FanoutGroup, FanoutGroupSpec};
use fanout::curve::{KeyPair, PublicKey};
use fanout::endpoint_list::{Endpoint, parse_list, render_list, slice_members};
use fanout::proxy::auth::{ZapPolicy, decide, parse_allow_list};
use fanout::subscriber::{GapTracker, SequenceCheck, SubscriberStats};
use fanout::wire::{
    ENVELOPE_LEN, Envelope, FLAT_MAX_TOPIC, Parsed, PublisherId, Split, WireError, batch_frame_len,
    write_batch_frame,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use std::net::IpAddr;

/// What `wire::split` makes of `frames` invents nothing: a version-4 frame gives its records
/// under its topic, in order; anything else one message whose payload is the input's.
fn check_split(frames: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let Some(messages) = fanout::wire::split(Vec::from(frames)) else {
        prop_assert!(frames.is_empty());
        return Ok(());
    };
    if let [frame] = frames
        && let Some(Ok((first, topic_len, records))) = Envelope::from_batch_frame(frame)
    {
        prop_assert_eq!(records.len(), messages.len());
        for ((i, message), record) in (0u64..).zip(&messages).zip(records) {
            prop_assert_eq!(&message.topic[..], &frame[..topic_len]);
            prop_assert_eq!(&message.payload[..], &[record.to_vec()][..]);
            let envelope = Envelope {
                sequence: first.sequence + i,
                ..first
            };
            prop_assert_eq!(&message.parsed, &Parsed::Enveloped { envelope });
        }
        return Ok(());
    }
    prop_assert_eq!(messages.len(), 1);
    let split = &messages[0];
    if let ([frame], Parsed::Enveloped { .. }) = (frames, &split.parsed)
        && let Some((_, topic_len)) = Envelope::from_flat_frame(frame)
    {
        // Version 3: the topic and the one payload part are cut from the frame.
        prop_assert_eq!(&split.topic[..], &frame[..topic_len]);
        prop_assert_eq!(
            &split.payload[..],
            &[frame[topic_len..frame.len() - ENVELOPE_LEN].to_vec()][..]
        );
    } else {
        // Nothing is invented: the payload frames are the input's, in order.
        let tail = &frames[frames.len() - split.payload.len()..];
        prop_assert_eq!(&split.payload[..], tail);
        prop_assert!(frames[0].starts_with(&split.topic));
    }
    if let Parsed::Malformed(err) = &split.parsed {
        prop_assert!(!err.to_string().is_empty());
    }
    Ok(())
}

/// The one message `frames` hold (`None`: no frames).
fn split(frames: Vec<Vec<u8>>) -> Option<Split> {
    let mut messages = fanout::wire::split(frames)?;
    assert_eq!(messages.len(), 1, "one message");
    Some(messages.remove(0))
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Text that is often near an endpoint: a scheme, a host of sorts, a port of sorts.
fn endpoint_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof!["tcp://", "ipc://", "udp://", "", "tcp:/"];
    let host = prop_oneof![
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "\\[[0-9a-f:]{0,20}\\]",
        "[0-9a-f:]{0,20}",
        "[a-z.-]{0,12}",
        "/[a-z/]{0,12}",
        ".{0,8}",
    ];
    let port = prop_oneof![":[0-9]{1,6}", ":", ":-1", "", ":x"];
    (scheme, host, port).prop_map(|(s, h, p)| format!("{s}{h}{p}"))
}

proptest! {
    // --- the envelope and the wire -------------------------------------------------------

    #[test]
    fn split_takes_any_frames_apart_without_panicking(frames in proptest::collection::vec(bytes(80), 0..6),
                                                       tail in proptest::option::of((1u8..=5, any::<u8>(), any::<[u8; 24]>()))) {
        // Near-valid input too: frame 0 may end in something shaped like an envelope of any
        // version, with any topic length byte.
        let mut frames = frames;
        if let (Some((version, topic_len, rest)), Some(first)) = (tail, frames.first_mut()) {
            first.extend_from_slice(&[0xFA, 0x0F, version, topic_len]);
            first.extend_from_slice(&rest);
        }
        check_split(&frames)?;
    }

    #[test]
    fn a_batch_frame_mutated_is_taken_apart_without_panicking(
        topic in bytes(20), payloads in proptest::collection::vec(bytes(30), 1..8),
        sequence in prop_oneof![any::<u64>(), (0u64..8).prop_map(|k| u64::MAX - k)],
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<proptest::sample::Index>())) {
        // Valid version-4 frames (one record included), then bytes changed (lengths, the topic
        // length, the version) or the frame cut short: what a peer may forge.
        let first = Envelope { publisher: PublisherId([9; 16]), sequence };
        let bytes = payloads.iter().map(Vec::len).sum();
        let mut frame = vec![0; batch_frame_len(topic.len(), payloads.len(), bytes)];
        let written = write_batch_frame(&mut frame, &topic, payloads.iter().map(Vec::as_slice), &first);
        prop_assert_eq!(written.is_some(), sequence.checked_add(payloads.len() as u64 - 1).is_some());
        if written.is_none() {
            return Ok(());
        }
        check_split(&[frame.clone()])?;
        for (at, value) in flips {
            let at = at.index(frame.len());
            frame[at] = value;
        }
        if let Some(cut) = cut {
            frame.truncate(cut.index(frame.len() + 1));
        }
        check_split(&[frame])?;
    }

    #[test]
    fn an_envelope_written_is_the_envelope_read(topic in bytes(64), id in any::<[u8; 16]>(), sequence in any::<u64>(),
                                                 payload in proptest::collection::vec(bytes(40), 0..4)) {
        let envelope = Envelope { publisher: PublisherId(id), sequence };
        let mut frame = Vec::new();
        envelope.write_topic_frame(&topic, &mut frame);
        let mut frames = vec![frame];
        frames.extend(payload.iter().cloned());
        let split = split(frames).expect("frames");
        prop_assert_eq!(split.topic, topic);
        prop_assert_eq!(split.payload, payload);
        prop_assert_eq!(split.parsed, Parsed::Enveloped { envelope });
    }

    #[test]
    fn a_flat_frame_written_is_the_message_read(topic in bytes(300), id in any::<[u8; 16]>(), sequence in any::<u64>(),
                                                payload in bytes(200)) {
        let envelope = Envelope { publisher: PublisherId(id), sequence };
        let mut frame = Vec::new();
        match envelope.write_flat_frame(&topic, &payload, &mut frame) {
            None => prop_assert!(topic.len() > FLAT_MAX_TOPIC),
            Some(()) => {
                prop_assert_eq!(frame.len(), topic.len() + payload.len() + ENVELOPE_LEN);
                // Prefix subscriptions still see the topic first.
                prop_assert!(frame.starts_with(&topic));
                let split = split(vec![frame]).expect("frames");
                prop_assert_eq!(split.topic, topic);
                prop_assert_eq!(split.payload, vec![payload]);
                prop_assert_eq!(split.parsed, Parsed::Enveloped { envelope });
            }
        }
    }

    #[test]
    fn a_batch_frame_written_is_the_messages_read(topic in bytes(300), id in any::<[u8; 16]>(),
                                                  sequence in prop_oneof![any::<u64>(), (0u64..12).prop_map(|k| u64::MAX - k)],
                                                  payloads in proptest::collection::vec(bytes(40), 1..12)) {
        let first = Envelope { publisher: PublisherId(id), sequence };
        let bytes = payloads.iter().map(Vec::len).sum();
        let mut frame = vec![0; batch_frame_len(topic.len(), payloads.len(), bytes)];
        let written = write_batch_frame(&mut frame, &topic, payloads.iter().map(Vec::as_slice), &first);
        let overflows = sequence.checked_add(payloads.len() as u64 - 1).is_none();
        if topic.len() > FLAT_MAX_TOPIC || overflows {
            // What no reader would take is never written.
            prop_assert_eq!(written, None);
            return Ok(());
        }
        prop_assert!(written.is_some());
        prop_assert!(frame.starts_with(&topic));
        let messages = fanout::wire::split(vec![frame]).expect("frames");
        prop_assert_eq!(messages.len(), payloads.len());
        for ((i, message), payload) in (0u64..).zip(&messages).zip(&payloads) {
            prop_assert_eq!(&message.topic, &topic);
            prop_assert_eq!(&message.payload, &vec![payload.clone()]);
            let envelope = Envelope { sequence: sequence + i, ..first };
            prop_assert_eq!(&message.parsed, &Parsed::Enveloped { envelope });
        }
    }

    #[test]
    fn a_utf8_topic_is_never_taken_for_an_envelope(topic in "\\PC{0,80}", payload in bytes(40)) {
        let split = split(vec![topic.clone().into_bytes(), payload]).expect("frames");
        prop_assert_eq!(split.topic, topic.into_bytes());
        let enveloped = matches!(split.parsed, Parsed::Enveloped { .. });
        prop_assert!(!enveloped);
    }

    #[test]
    fn a_utf8_single_frame_is_never_taken_for_an_envelope(text in "\\PC{0,120}") {
        let split = split(vec![text.clone().into_bytes()]).expect("frames");
        prop_assert_eq!(split.topic, text.into_bytes());
        prop_assert_eq!(split.parsed, Parsed::Plain);
    }

    #[test]
    fn a_version_1_frame_decodes_or_says_why(frame in bytes(40), magic in any::<bool>()) {
        let mut frame = frame;
        if magic && frame.len() >= 2 {
            frame[0] = 0xFA;
            frame[1] = 0x0F;
        }
        match Envelope::decode(&frame) {
            Ok(_) => prop_assert_eq!(frame.len(), ENVELOPE_LEN),
            Err(WireError::NoMagic) => prop_assert!(frame.len() < 2 || frame[0..2] != [0xFA, 0x0F]),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn gap_accounting_never_overflows(observations in proptest::collection::vec((0u8..4, 0u8..4, any::<u64>()), 1..64)) {
        let mut tracker = GapTracker::default();
        for (publisher, topic, sequence) in observations {
            match tracker.observe(PublisherId([publisher; 16]), &[topic], sequence) {
                SequenceCheck::Gap { lost } => prop_assert!(lost < u64::MAX),
                SequenceCheck::First | SequenceCheck::InOrder | SequenceCheck::OutOfOrder => {}
            }
        }
    }

    #[test]
    fn forged_envelopes_never_overflow_the_counts_nor_grow_them_without_bound(
        observations in proptest::collection::vec((0u8..6, 0u8..4, prop_oneof![
            Just(0u64), Just(1), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()]), 1..64)
    ) {
        let mut tracker = GapTracker::default();
        let mut stats = SubscriberStats::default();
        let (mut lost, mut gaps) = (0, 0);
        for (publisher, topic, sequence) in &observations {
            let id = PublisherId([*publisher; 16]);
            let check = tracker.observe(id, &[*topic], *sequence);
            stats.record(id, check);
            // Saturating, never wrapping: the totals only ever grow.
            prop_assert!(stats.total_lost() >= lost && stats.total_gaps() >= gaps);
            (lost, gaps) = (stats.total_lost(), stats.total_gaps());
        }
        let received: u64 = stats.per_publisher.values().map(|c| c.received).sum::<u64>() + stats.evicted.received;
        prop_assert_eq!(received, observations.len() as u64);
        prop_assert!(stats.per_publisher.len() <= SubscriberStats::MAX_PUBLISHERS);
        prop_assert!(tracker.streams() <= GapTracker::MAX_STREAMS);
    }

    // --- endpoints, lists, slices --------------------------------------------------------

    #[test]
    fn an_endpoint_parses_or_names_the_problem(text in endpoint_like()) {
        match Endpoint::parse(&text) {
            Ok(endpoint) => {
                prop_assert_eq!(endpoint.as_str(), text.as_str());
                prop_assert!(text.starts_with("tcp://") || text.starts_with("ipc://"));
            }
            Err(err) => {
                prop_assert!(!err.reason.is_empty());
                let quoted = format!("{:?}", text);
                prop_assert!(err.to_string().contains(&quoted));
            }
        }
    }

    #[test]
    fn every_tcp_address_makes_an_endpoint_that_parses_back(address in any::<IpAddr>(), port in 1u16..) {
        let endpoint = Endpoint::tcp(address, port);
        prop_assert_eq!(Endpoint::parse(endpoint.as_str()).ok(), Some(endpoint.clone()));
        prop_assert_eq!(Endpoint::from_host(&address.to_string(), port).ok(), Some(endpoint));
    }

    #[test]
    fn a_list_keeps_its_valid_lines_and_reports_the_rest(lines in proptest::collection::vec(
            prop_oneof![endpoint_like(), "#.{0,10}", " *", "\\PC{0,20}"], 0..20)) {
        let text = lines.join("\n");
        let (members, invalid) = parse_list(&text);
        let counted = lines
            .iter()
            .flat_map(|l| l.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        prop_assert!(members.len() + invalid.len() <= counted);
        for line in &invalid {
            prop_assert!(!line.reason.is_empty() && line.line >= 1);
        }
        // What we render, we read back exactly.
        let (again, none) = parse_list(&render_list(&members));
        prop_assert_eq!(again, members);
        prop_assert!(none.is_empty());
    }

    #[test]
    fn any_slice_shape_yields_only_published_valid_endpoints(
        endpoints in proptest::collection::vec((
            proptest::collection::vec(prop_oneof![endpoint_like(), any::<IpAddr>().prop_map(|a| a.to_string())], 0..3),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        ), 0..8),
        ports in proptest::collection::vec((proptest::option::of(prop_oneof!["publish", "other", ""]), proptest::option::of(any::<i32>())), 0..3),
        family in prop_oneof!["IPv4", "IPv6", "FQDN", ""],
    ) {
        let slice = EndpointSlice {
            address_type: family.to_string(),
            endpoints: endpoints
                .iter()
                .map(|(addresses, ready, terminating)| SliceEndpoint {
                    addresses: addresses.clone(),
                    conditions: Some(EndpointConditions { ready: *ready, serving: None, terminating: *terminating }),
                    ..SliceEndpoint::default()
                })
                .collect(),
            ports: Some(ports.iter().map(|(name, port)| EndpointPort {
                name: name.clone(),
                port: *port,
                ..EndpointPort::default()
            }).collect()),
            ..EndpointSlice::default()
        };
        for member in slice_members(&slice) {
            prop_assert!(Endpoint::parse(member.as_str()).is_ok());
            let published = endpoints.iter().any(|(addresses, ready, terminating)| {
                ready.unwrap_or(true)
                    && !terminating.unwrap_or(false)
                    && addresses.iter().any(|a| member.as_str().contains(a.as_str()))
            });
            prop_assert!(published, "{} is not a published address", member);
        }
    }

    // --- CURVE keys, allow-lists, ZAP ----------------------------------------------------

    #[test]
    fn a_z85_key_parses_or_says_why(text in prop_oneof![".{0,45}", "[0-9a-zA-Z.:+=^!/*?&<>()@%$#{}\\[\\]-]{40}"]) {
        match PublicKey::from_z85(&text) {
            Ok(key) => prop_assert_eq!(key.to_z85(), text.trim_end()),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn an_allow_list_admits_exactly_its_valid_keys(noise in proptest::collection::vec(".{0,50}", 0..10), keys in 0usize..4) {
        let keys: Vec<String> = (0..keys).map(|_| KeyPair::generate().expect("keypair").public.to_z85()).collect();
        let mut lines = noise.clone();
        lines.extend(keys.iter().cloned());
        let (list, invalid) = parse_allow_list(&lines.join("\n"));
        for key in &keys {
            prop_assert!(list.allows_z85(key));
        }
        for line in invalid {
            prop_assert!(!line.reason.is_empty());
        }
    }

    #[test]
    fn zap_answers_any_request_with_a_reply(frames in proptest::collection::vec(bytes(48), 0..9)) {
        let (list, _) = parse_allow_list("");
        let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let decision = decide(&frames, ZapPolicy { publishers: &list, subscribers: Some(&list) });
        let reply = decision.reply(b"1");
        // Nobody is on the list, so nothing may be admitted.
        prop_assert_ne!(reply[2], b"200".as_slice());
    }

    // --- FanoutGroup specs at the edges of their ranges ----------------------------------

    #[test]
    fn a_spec_at_the_edges_is_planned_or_refused_with_a_reason(
        publisher_port in prop_oneof![Just(0), Just(1), Just(65535), Just(65536), Just(-1), any::<i32>()],
        http_port in prop_oneof![Just(0), Just(9102), Just(70000), any::<i32>()],
        subscriber_port in proptest::option::of(any::<i32>()),
        high_water_mark in prop_oneof![Just(0), Just(1), Just(1_000_000), Just(i32::MAX), any::<i32>()],
        max_message_bytes in prop_oneof![Just(0), Just(1), Just(67_108_864), Just(i64::MAX), any::<i64>()],
        heartbeat_seconds in any::<i32>(),
        endpoints_per_slice in prop_oneof![Just(0), Just(1), Just(1000), Just(-5), any::<i32>()],
        socket_dir in prop_oneof![Just("/var/run/fanout".to_string()), "/var/run/fanout/[a-z./]{0,20}", ".{0,30}"],
        socket_group in proptest::option::of(any::<i64>()),
        curve in any::<bool>(),
    ) {
        let mut spec = FanoutGroupSpec {
            publisher_port, http_port, subscriber_port, high_water_mark, max_message_bytes,
            heartbeat_seconds, endpoints_per_slice, socket_dir, socket_group,
            ..FanoutGroupSpec::default()
        };
        spec.security.curve = curve;
        let mut group = FanoutGroup::new("updates", spec);
        group.metadata.namespace = Some("net".into());
        group.metadata.uid = Some("uid-1".into());
        let policy = ProxyPolicy { own_image: Some("img:1".into()), ..ProxyPolicy::default() };
        let id = fanout::controller::objects::GroupId::of(&group).expect("a valid name");
        match plan(&group, &id, &Children::default(), &policy, Timestamp::UNIX_EPOCH) {
            Ok(planned) => {
                if let Some(problem) = planned.problem {
                    prop_assert!(!problem.reason.is_empty() && !problem.message.is_empty());
                }
            }
            Err(unrealisable) => prop_assert!(!unrealisable.to_string().is_empty()),
        }
    }
}
