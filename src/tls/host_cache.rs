//! A bounded cache of what is built once per host (a leaf's server config).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::answer::error::ConfigError;

/// How many hosts' leaves are kept; the oldest is dropped past it.
const LEAF_CACHE_SIZE: usize = 1024;

/// Leaves live 390 days; one is replaced at half its life, so a long-running
/// app never serves one near its end.
const LEAF_RENEWAL: std::time::Duration = std::time::Duration::from_secs(195 * 24 * 3600);

/// A bounded map from host to something built once per host (FIFO eviction),
/// rebuilt once it is older than its lifetime. Callers that miss at the same
/// moment wait for one build instead of each building their own.
pub(crate) struct HostCache<T> {
    entries: Mutex<Entries<T>>,
    lifetime: std::time::Duration,
}

struct Entries<T> {
    by_host: HashMap<String, Arc<Entry<T>>>,
    oldest_first: VecDeque<String>,
}

struct Entry<T> {
    built: std::sync::OnceLock<Result<Arc<T>, ConfigError>>,
    born: std::time::Instant,
}

impl<T> Default for HostCache<T> {
    fn default() -> Self {
        HostCache::with_lifetime(LEAF_RENEWAL)
    }
}

impl<T> HostCache<T> {
    fn with_lifetime(lifetime: std::time::Duration) -> Self {
        let entries = Entries { by_host: HashMap::new(), oldest_first: VecDeque::new() };
        HostCache { entries: Mutex::new(entries), lifetime }
    }

    pub(crate) fn get_or_try_insert(
        &self,
        host: &str,
        build: impl FnOnce() -> Result<T, ConfigError>,
    ) -> Result<Arc<T>, ConfigError> {
        let entry = self.entry(host);
        let built = entry.built.get_or_init(|| build().map(Arc::new)).clone();
        if built.is_err() {
            // A failure is not remembered: the next caller tries again.
            let mut entries = self.entries.lock();
            if entries.by_host.get(host).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                entries.by_host.remove(host);
                entries.oldest_first.retain(|h| h != host);
            }
        }
        built
    }

    /// The host's entry, a new (unbuilt) one when it is missing or too old.
    fn entry(&self, host: &str) -> Arc<Entry<T>> {
        let mut entries = self.entries.lock();
        if let Some(found) = entries.by_host.get(host).filter(|e| e.born.elapsed() < self.lifetime) {
            return found.clone();
        }
        let fresh = Arc::new(Entry { built: std::sync::OnceLock::new(), born: std::time::Instant::now() });
        if entries.by_host.insert(host.to_owned(), fresh.clone()).is_none() {
            entries.oldest_first.push_back(host.to_owned());
        }
        while entries.by_host.len() > LEAF_CACHE_SIZE {
            let Some(oldest) = entries.oldest_first.pop_front() else { break };
            entries.by_host.remove(&oldest);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cache_builds_once_for_simultaneous_misses() {
        let cache = HostCache::<usize>::default();
        let builds = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    cache
                        .get_or_try_insert("localhost", || {
                            builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(1)
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(builds.into_inner(), 1);
    }

    #[test]
    fn host_cache_renews_old_entries_and_forgets_failures() {
        let cache = HostCache::<usize>::with_lifetime(std::time::Duration::from_millis(20));
        assert_eq!(*cache.get_or_try_insert("a", || Ok(1)).unwrap(), 1);
        assert_eq!(*cache.get_or_try_insert("a", || Ok(2)).unwrap(), 1);
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(*cache.get_or_try_insert("a", || Ok(3)).unwrap(), 3);
        assert!(cache.get_or_try_insert("b", || Err(ConfigError::new("leaf", "no"))).is_err());
        assert_eq!(*cache.get_or_try_insert("b", || Ok(4)).unwrap(), 4);
        assert_eq!(cache.entries.lock().oldest_first.len(), 2);
    }

    #[test]
    fn host_cache_is_bounded_and_reuses_entries() {
        let cache = HostCache::<usize>::default();
        let first = cache.get_or_try_insert("a", || Ok(1)).unwrap();
        let again = cache.get_or_try_insert("a", || Ok(2)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        for i in 0..LEAF_CACHE_SIZE + 10 {
            cache.get_or_try_insert(&format!("h{i}"), || Ok(i)).unwrap();
        }
        assert_eq!(cache.entries.lock().by_host.len(), LEAF_CACHE_SIZE);
        assert_eq!(cache.entries.lock().oldest_first.len(), LEAF_CACHE_SIZE);
    }
}
