//! What a forging peer can make a subscriber keep, measured in bytes (issue 10, 0b): every
//! allocation of this test binary is counted, so the bound holds for what the loss accounting
//! really holds, hash tables and all, not for an estimate. One test in this binary, so nothing
//! else allocates meanwhile.

use fanout::subscriber::{GapTracker, SubscriberStats};
use fanout::wire::PublisherId;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most the accounting may hold, whatever the peer sends: `GapTracker::MAX_STREAMS`
/// streams of 16 bytes in hash tables (up to twice the entries while one grows) and
/// `SubscriberStats::MAX_PUBLISHERS` counters. docs/security.md quotes it.
const BOUND: usize = 8 << 20;

fn id(i: u64) -> PublisherId {
    let mut id = [0xAB; 16];
    id[..8].copy_from_slice(&i.to_le_bytes());
    PublisherId(id)
}

#[test]
fn forged_publishers_and_64_kib_topics_cost_a_bounded_number_of_bytes() {
    // The topics are made before counting starts: they are the peer's bytes, not ours.
    let mut topic = vec![b't'; 64 * 1024];
    let mut tracker = GapTracker::default();
    let mut stats = SubscriberStats::default();
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);

    // 400 distinct 64 KiB topics of one forged publisher (25 MiB if kept as bytes), then 1100
    // forged publishers x 64 short topics (70 400 streams), each seen at 0 then u64::MAX.
    let mut feed = |publisher: u64, topic: &[u8]| {
        for sequence in [0, u64::MAX] {
            let check = tracker.observe(id(publisher), topic, sequence);
            stats.record(id(publisher), check);
        }
    };
    for n in 0..400u64 {
        topic[..8].copy_from_slice(&n.to_le_bytes());
        feed(u64::MAX, &topic);
    }
    for publisher in 0..1100u64 {
        for n in 0..64u64 {
            feed(publisher, &n.to_le_bytes());
        }
    }
    let held = LIVE.load(Ordering::Relaxed) - start;
    let peak = PEAK.load(Ordering::Relaxed) - start;
    println!(
        "forged: 400 topics of 64 KiB, 1100 publishers x 64 topics; tracked {} streams of {} publishers; \
         held {held} bytes, peak {peak} bytes",
        tracker.streams(),
        tracker.publishers()
    );
    // Full to the bound, and no more. Not exactly at it: which publisher a full table sheds is
    // whichever its hash map yields first (the 400-topic one or a 64-topic one), so the count
    // after the last stream varies by a few dozen from run to run.
    assert!(
        tracker.streams() <= GapTracker::MAX_STREAMS,
        "{} streams",
        tracker.streams()
    );
    assert!(
        tracker.streams() >= GapTracker::MAX_STREAMS - 2 * 400,
        "{} streams: eviction shed far more than one publisher",
        tracker.streams()
    );
    assert!(tracker.publishers() <= GapTracker::MAX_PUBLISHERS);
    assert_eq!(stats.per_publisher.len(), SubscriberStats::MAX_PUBLISHERS);
    assert_eq!(stats.total_lost(), u64::MAX, "saturated, not wrapped");
    assert!(
        peak <= BOUND,
        "the accounting peaked at {peak} bytes, above {BOUND}"
    );
}
