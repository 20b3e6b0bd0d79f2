//! The heap probe: the binary chooses the allocator and registers how to read its statistics;
//! the journal's sampler (`store::sampler`) calls [`sample_heap`] on its timer, so the gauges
//! `yijian_heap_allocated_bytes` and `yijian_heap_resident_bytes` tell a leak from caches
//! filling and from allocator retention.

use std::sync::OnceLock;

/// Reads the allocator's statistics: `(allocated, resident)` bytes. The library does not choose
/// the allocator; the binary does, and registers this for it.
pub type HeapProbe = fn() -> Option<(u64, u64)>;

static HEAP_PROBE: OnceLock<HeapProbe> = OnceLock::new();

/// Register the allocator's probe (once per process; later calls are ignored).
pub fn set_heap_probe(probe: HeapProbe) {
    let _ = HEAP_PROBE.set(probe);
}

/// Set the heap gauges from the probe, when one is registered.
pub fn sample_heap() {
    if let Some((allocated, resident)) = HEAP_PROBE.get().and_then(|probe| probe()) {
        super::heap(allocated, resident);
    }
}
