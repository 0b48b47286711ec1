use std::time::Duration;

use tokio::sync::watch;

use super::cache::{Cache, Followed, Limits, lock, now};

/// An entry following a watch whose value says whether the answer was empty (`None`: no
/// answer yet).
struct Probe(watch::Receiver<Option<bool>>);

impl Followed for Probe {
    fn is_empty(&self) -> bool {
        *self.0.borrow() == Some(true)
    }
}

/// A watch answered `empty` (or not yet), its sender to tell when the entry let it go.
fn probe(answer: Option<bool>) -> (watch::Sender<Option<bool>>, Probe) {
    let (tx, rx) = watch::channel(answer);
    (tx, Probe(rx))
}

fn limits(capacity: usize) -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(30),
        capacity,
    }
}

/// Uses `key` now, making its entry from `answer` when there is none; the sender when it did.
fn touch(
    cache: &mut Cache<u32, Probe>,
    key: u32,
    answer: Option<bool>,
) -> Option<watch::Sender<Option<bool>>> {
    let mut made = None;
    cache.with(
        &key,
        now(),
        || {
            let (tx, p) = probe(answer);
            made = Some(tx);
            p
        },
        |_| {},
    );
    made
}

#[tokio::test(start_paused = true)]
async fn an_idle_destination_is_released_and_its_watch_ends() {
    let cache = Cache::<u32, Probe>::shared(limits(10));
    let known = touch(&mut lock(&cache), 1, Some(false)).unwrap();
    let unknown = touch(&mut lock(&cache), 2, Some(true)).unwrap();
    let pending = touch(&mut lock(&cache), 3, None).unwrap();
    // A name the mesh does not know goes after 5 s idle, the others after 30 s; each release
    // drops the watch (its stream at the control plane ends with it).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!unknown.is_closed());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(unknown.is_closed());
    assert!(!known.is_closed() && !pending.is_closed());
    assert_eq!(lock(&cache).len(), 2);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(known.is_closed() && pending.is_closed());
    assert!(lock(&cache).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_destination_in_use_stays_however_long() {
    let cache = Cache::<u32, Probe>::shared(limits(10));
    let known = touch(&mut lock(&cache), 1, Some(false)).unwrap();
    // A service without endpoints that requests keep asking for stays too: it may get some.
    let empty = touch(&mut lock(&cache), 2, Some(true)).unwrap();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(touch(&mut lock(&cache), 1, Some(false)).is_none());
        assert!(touch(&mut lock(&cache), 2, Some(true)).is_none());
    }
    assert!(!known.is_closed() && !empty.is_closed());
    // An answer that turns empty shortens the entry's life from then on.
    known.send_replace(Some(true));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(known.is_closed() && empty.is_closed());
}

#[tokio::test(start_paused = true)]
async fn past_capacity_the_least_recently_used_goes_and_empty_answers_first() {
    let mut cache = Cache::<u32, Probe>::new(limits(3));
    let a = touch(&mut cache, 1, Some(false)).unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    let b = touch(&mut cache, 2, Some(false)).unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    let c = touch(&mut cache, 3, Some(true)).unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    touch(&mut cache, 1, Some(false));
    // Full: the empty answer goes first, though used after the others.
    let d = touch(&mut cache, 4, None).unwrap();
    assert!(c.is_closed());
    assert!(!a.is_closed() && !b.is_closed() && !d.is_closed());
    // Then the least recently used: 2 (1 was used again since).
    tokio::time::advance(Duration::from_millis(10)).await;
    touch(&mut cache, 5, Some(false));
    assert!(b.is_closed());
    assert!(!a.is_closed() && !d.is_closed());
    assert_eq!(cache.len(), 3);
    assert!(cache.contains(&1) && cache.contains(&4) && cache.contains(&5));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_names_never_evicts_a_known_destination() {
    let cache = Cache::<u32, Probe>::shared(limits(8));
    let known: Vec<_> = (0..4)
        .map(|k| touch(&mut lock(&cache), k, Some(false)).unwrap())
        .collect();
    let mut released = 0;
    let mut unknown = Vec::new();
    for name in 1_000..3_000 {
        unknown.push(touch(&mut lock(&cache), name, Some(true)).unwrap());
        released = unknown.iter().filter(|tx| tx.is_closed()).count();
        assert!(lock(&cache).len() <= 8);
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    // 2,000 names over 10 s: all but the last four were released; the known ones stay.
    assert_eq!(released, 2_000 - 4);
    assert!(known.iter().all(|tx| !tx.is_closed()));
    assert!((0..4).all(|k| lock(&cache).contains(&k)));
}

#[test]
fn a_cache_outside_a_runtime_still_keeps_its_bound() {
    let cache = Cache::<u32, Probe>::shared(limits(2));
    let first = touch(&mut lock(&cache), 1, Some(false)).unwrap();
    for k in 2..10 {
        touch(&mut lock(&cache), k, Some(false));
    }
    assert!(first.is_closed());
    assert_eq!(lock(&cache).len(), 2);
}
