//! Native (PVH entry) SMP (stub: one CPU until it is written).

/// Starts CPUs 1..`want`; returns how many are online.
pub fn bring_up(_want: usize) -> usize {
    1
}

/// The CPU running this code.
pub fn this_cpu() -> usize {
    0
}

/// Interrupts `cpu` (its handler calls `super::handle_ipi`).
pub fn send_ipi(_cpu: usize) {}

/// Masks interrupts/events on this CPU; returns whether they were masked.
pub fn mask_events() -> bool {
    false
}

/// Restores what `mask_events` returned.
pub fn restore_events(_was_masked: bool) {}

/// Waits for the next interrupt or event.
pub fn idle_wait() {
    core::hint::spin_loop();
}
