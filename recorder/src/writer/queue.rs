//! The bounded hand-off between the service's threads and the writer.
//!
//! `seq` is assigned under the same lock that appends to the queue, so queue
//! order is seq order and the writer never reorders. The lock is held for a
//! counter bump, a clock read and a `Vec::push`: tens of nanoseconds.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event::{Event, EventKind, GapReason, TaskId, EVENT_PAYLOAD_BYTES_MAX};

/// What happened to one recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Queued for writing under this seq.
    Queued(u64),
    /// Dropped; the seq is lost and a `Gap` event will cover it.
    Dropped(u64),
}

impl Recorded {
    /// The seq the event was given, queued or not.
    pub fn seq(self) -> u64 {
        match self {
            Recorded::Queued(seq) | Recorded::Dropped(seq) => seq,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PendingGap {
    first_lost_seq: u64,
    reason: GapReason,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QueueCounters {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    pub(crate) gaps: u64,
    /// Seqs handed out so far (the next seq), not counting the ones
    /// handed out after close.
    pub(crate) produced: u64,
    /// Events recorded after close (tasks still running while the process
    /// exits): not part of the run, and not lost from it either.
    pub(crate) after_close: u64,
}

#[derive(Debug)]
struct State {
    events: Vec<Event>,
    payload_bytes: usize,
    next_seq: u64,
    pending_gap: Option<PendingGap>,
    closed: bool,
    /// A write outage: every event is dropped into the pending gap until
    /// the writer tries again ([`Queue::begin_outage`]).
    shedding: bool,
    counters: QueueCounters,
}

/// The writer is woken once this many events are queued, not only every
/// flush interval: encoding and compressing a batch is a burst of CPU that
/// competes with the service, so batches stay small (~60 KiB raw) at any
/// rate and still compress well.
pub(crate) const WRITER_WAKE_EVENTS: usize = 1 << 10;

#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    writer_wakeup: Condvar,
    start: Instant,
    /// `start` on the real clock (see [`crate::clock`]): events are
    /// stamped from it, never through an interposed clock.
    start_ns: u64,
    events_max: usize,
    payload_bytes_max: usize,
    /// Queue length at which the writer is woken early instead of waiting
    /// for its flush interval.
    wake_at: usize,
}

impl Queue {
    pub(crate) fn new(events_max: usize, payload_bytes_max: usize) -> Queue {
        assert!(events_max >= 2, "a gap and the event after it must fit");
        Queue {
            state: Mutex::new(State {
                events: Vec::with_capacity(events_max),
                payload_bytes: 0,
                next_seq: 0,
                pending_gap: None,
                closed: false,
                shedding: false,
                counters: QueueCounters::default(),
            }),
            writer_wakeup: Condvar::new(),
            start: Instant::now(),
            start_ns: crate::clock::mono_ns(),
            events_max,
            payload_bytes_max,
            wake_at: (events_max / 2).min(WRITER_WAKE_EVENTS),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (every update is a single push or counter bump), so poison is moot.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn origin(&self) -> Instant {
        self.start
    }

    pub(crate) fn origin_ns(&self) -> u64 {
        self.start_ns
    }

    pub(crate) fn elapsed_ns(&self) -> u64 {
        crate::clock::mono_ns().saturating_sub(self.start_ns)
    }

    /// Assign a seq and queue the event, or drop it and remember the gap.
    /// Never blocks on I/O.
    pub(crate) fn push(&self, task: TaskId, mono_ns: Option<u64>, kind: EventKind) -> Recorded {
        let payload = kind.payload_len();
        let mut state = self.lock();
        let mono_ns = mono_ns.unwrap_or_else(|| self.elapsed_ns());
        let seq = state.next_seq;
        state.next_seq += 1;
        // After close nothing is written, so no gap covers these: the run
        // ended (its exit is logged), and they are counted apart.
        if state.closed {
            state.counters.after_close += 1;
            return Recorded::Dropped(seq);
        }
        if state.shedding {
            state.counters.dropped += 1;
            state.pending_gap.get_or_insert(PendingGap {
                first_lost_seq: seq,
                reason: GapReason::WriteFailed,
            });
            return Recorded::Dropped(seq);
        }
        let reason = if payload > EVENT_PAYLOAD_BYTES_MAX {
            Some(GapReason::EventTooLarge)
        } else {
            let needed = 1 + usize::from(state.pending_gap.is_some());
            let full = state.events.len() + needed > self.events_max
                || state.payload_bytes + payload > self.payload_bytes_max;
            full.then_some(GapReason::QueueFull)
        };
        if let Some(reason) = reason {
            state.counters.dropped += 1;
            state.pending_gap.get_or_insert(PendingGap {
                first_lost_seq: seq,
                reason,
            });
            return Recorded::Dropped(seq);
        }
        // The gap (if any) takes this seq, so it sits right after the lost
        // ones; the event takes the next.
        let seq = match Self::emit_gap(&mut state, task, mono_ns, seq) {
            true => {
                let seq = state.next_seq;
                state.next_seq += 1;
                seq
            }
            false => seq,
        };
        state.events.push(Event {
            seq,
            task,
            mono_ns,
            kind,
        });
        state.payload_bytes += payload;
        state.counters.queued += 1;
        if state.events.len() == self.wake_at {
            self.writer_wakeup.notify_one();
        }
        Recorded::Queued(seq)
    }

    /// Push the pending gap (if any) with the given seq. True if pushed.
    fn emit_gap(state: &mut State, task: TaskId, mono_ns: u64, seq: u64) -> bool {
        let Some(gap) = state.pending_gap.take() else {
            return false;
        };
        debug_assert!(gap.first_lost_seq < seq);
        state.events.push(Event {
            seq,
            task,
            mono_ns,
            kind: EventKind::Gap {
                first_lost_seq: gap.first_lost_seq,
                lost: seq - gap.first_lost_seq,
                reason: gap.reason,
            },
        });
        state.counters.gaps += 1;
        state.counters.queued += 1;
        true
    }

    /// Wait up to `interval` (less if the queue fills or closes), then swap
    /// the queued events into `batch`. A pending gap is written right away:
    /// the swap just made room for it. Returns true once closed: `batch`
    /// then holds the last events there will ever be.
    pub(crate) fn take(&self, batch: &mut Vec<Event>, interval: Duration) -> bool {
        debug_assert!(batch.is_empty());
        let mut state = self.lock();
        if !state.closed && state.events.len() < self.wake_at {
            state = self
                .writer_wakeup
                .wait_timeout(state, interval)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        std::mem::swap(&mut state.events, batch);
        state.payload_bytes = 0;
        // During an outage the gap waits for the writer's next try.
        if state.pending_gap.is_some() && !state.shedding {
            let seq = state.next_seq;
            state.next_seq += 1;
            let mono_ns = self.elapsed_ns();
            let task = batch.last().map_or(TaskId::MAIN, |event| event.task);
            Self::emit_gap(&mut state, task, mono_ns, seq);
            let gap = state.events.pop().expect("just pushed");
            batch.push(gap);
        }
        state.closed
    }

    /// Stop accepting events and wake the writer for its last batch.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.writer_wakeup.notify_one();
    }

    pub(crate) fn counters(&self) -> QueueCounters {
        let state = self.lock();
        QueueCounters {
            produced: state.next_seq - state.counters.after_close,
            ..state.counters
        }
    }

    /// The writer could not write, and everything from `first_lost_seq`
    /// on is lost (it has counted what it held itself with
    /// [`Queue::count_lost`]). What is queued is swapped into `spill`, to
    /// be freed off the lock, and counted; until [`Queue::end_outage`]
    /// every push is dropped. One `WriteFailed` gap covers the whole hole:
    /// like a queue-full gap, it takes the seq of the first event queued
    /// after the outage (or the writer's next take), right after the hole.
    pub(crate) fn begin_outage(&self, first_lost_seq: u64, spill: &mut Vec<Event>) {
        let mut state = self.lock();
        std::mem::swap(&mut state.events, spill);
        state.payload_bytes = 0;
        state.counters.dropped += spill.len() as u64;
        state.shedding = true;
        // A queue-full gap still pending lies inside the hole: the writer
        // has written nothing at or after it.
        let first_lost_seq = state
            .pending_gap
            .map_or(first_lost_seq, |gap| gap.first_lost_seq.min(first_lost_seq));
        // Nothing lost yet (every seq handed out is on disk): the first
        // event shed starts the gap instead.
        if first_lost_seq < state.next_seq {
            state.pending_gap = Some(PendingGap {
                first_lost_seq,
                reason: GapReason::WriteFailed,
            });
        }
    }

    /// The writer is about to try writing again: accept events, the first
    /// one (or the next take) preceded by the outage's gap.
    pub(crate) fn end_outage(&self) {
        self.lock().shedding = false;
    }

    /// Count events the writer took but could not write.
    pub(crate) fn count_lost(&self, events: u64) {
        let mut state = self.lock();
        state.counters.dropped += events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(bytes: usize) -> EventKind {
        EventKind::Mark {
            name: "m".into(),
            value: vec![0; bytes],
        }
    }

    #[test]
    fn full_queue_drops_then_writes_one_gap_before_the_next_event() {
        let queue = Queue::new(4, 1 << 20);
        let pushed: Vec<Recorded> = (0..7)
            .map(|_| queue.push(TaskId(1), Some(5), mark(1)))
            .collect();
        assert_eq!(
            pushed,
            [
                Recorded::Queued(0),
                Recorded::Queued(1),
                Recorded::Queued(2),
                Recorded::Queued(3),
                Recorded::Dropped(4),
                Recorded::Dropped(5),
                Recorded::Dropped(6),
            ]
        );
        let mut batch = Vec::new();
        assert!(!queue.take(&mut batch, Duration::ZERO));
        let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [0, 1, 2, 3, 7],
            "the gap is written as soon as there is room"
        );
        assert_eq!(
            batch[4].kind,
            EventKind::Gap {
                first_lost_seq: 4,
                lost: 3,
                reason: GapReason::QueueFull
            }
        );
        assert_eq!(queue.push(TaskId(1), None, mark(1)), Recorded::Queued(8));
        let counters = queue.counters();
        // queued counts the gap event too: it is written like any other.
        assert_eq!(
            (counters.queued, counters.dropped, counters.gaps),
            (6, 3, 1)
        );
    }

    #[test]
    fn the_gap_precedes_the_event_that_found_room() {
        let queue = Queue::new(4, 12);
        assert_eq!(queue.push(TaskId(1), Some(0), mark(8)), Recorded::Queued(0));
        assert_eq!(
            queue.push(TaskId(1), Some(0), mark(8)),
            Recorded::Dropped(1)
        );
        assert_eq!(queue.push(TaskId(2), Some(0), mark(1)), Recorded::Queued(3));
        let mut batch = Vec::new();
        queue.take(&mut batch, Duration::ZERO);
        assert_eq!(batch[1].seq, 2);
        assert!(matches!(
            batch[1].kind,
            EventKind::Gap {
                first_lost_seq: 1,
                lost: 1,
                ..
            }
        ));
    }

    #[test]
    fn oversized_events_become_a_gap_not_a_crash() {
        let queue = Queue::new(8, usize::MAX);
        let big = queue.push(TaskId(0), None, mark(EVENT_PAYLOAD_BYTES_MAX + 1));
        assert_eq!(big, Recorded::Dropped(0));
        queue.push(TaskId(0), None, mark(1));
        let mut batch = Vec::new();
        queue.take(&mut batch, Duration::ZERO);
        assert!(matches!(
            batch[0].kind,
            EventKind::Gap {
                reason: GapReason::EventTooLarge,
                ..
            }
        ));
    }

    #[test]
    fn an_outage_sheds_into_one_write_failed_gap_right_after_the_hole() {
        let queue = Queue::new(8, 1024);
        for _ in 0..3 {
            queue.push(TaskId(1), Some(0), mark(1));
        }
        let mut batch = Vec::new();
        queue.take(&mut batch, Duration::ZERO);
        assert_eq!(batch.len(), 3);
        assert_eq!(queue.push(TaskId(1), Some(0), mark(1)), Recorded::Queued(3));
        // The writer got seq 0 on disk, lost 1 and 2 (it counts those).
        queue.count_lost(2);
        let mut spill = Vec::new();
        queue.begin_outage(1, &mut spill);
        assert_eq!(spill.len(), 1, "what was queued is handed back to free");
        assert_eq!(
            queue.push(TaskId(1), Some(0), mark(1)),
            Recorded::Dropped(4)
        );
        queue.end_outage();
        assert_eq!(queue.push(TaskId(2), Some(0), mark(1)), Recorded::Queued(6));
        batch.clear();
        queue.take(&mut batch, Duration::ZERO);
        assert_eq!(batch[0].seq, 5);
        assert_eq!(
            batch[0].kind,
            EventKind::Gap {
                first_lost_seq: 1,
                lost: 4,
                reason: GapReason::WriteFailed
            }
        );
        let counters = queue.counters();
        assert_eq!((counters.produced, counters.dropped), (7, 4));
        // Three written plus the gap and the event after it, minus the
        // lost ones the writer took: 7 = 3 on disk (0, 5, 6) + 4 dropped.
        assert_eq!(counters.queued, 6);
    }

    #[test]
    fn an_outage_with_nothing_lost_yet_starts_its_gap_at_the_first_shed_event() {
        let queue = Queue::new(8, 1024);
        queue.push(TaskId(1), Some(0), mark(1));
        let mut batch = Vec::new();
        queue.take(&mut batch, Duration::ZERO);
        let mut spill = Vec::new();
        // Seq 0 is on disk; the failure was in closing a segment, say.
        queue.begin_outage(1, &mut spill);
        assert_eq!(
            queue.push(TaskId(1), Some(0), mark(1)),
            Recorded::Dropped(1)
        );
        queue.end_outage();
        batch.clear();
        queue.take(&mut batch, Duration::ZERO);
        assert_eq!(batch.len(), 1, "the take itself carries the gap");
        assert_eq!(
            (batch[0].seq, &batch[0].kind),
            (
                2,
                &EventKind::Gap {
                    first_lost_seq: 1,
                    lost: 1,
                    reason: GapReason::WriteFailed
                }
            )
        );
    }

    #[test]
    fn closed_queue_drops_and_counts() {
        let queue = Queue::new(8, 1024);
        queue.close();
        assert_eq!(queue.push(TaskId(0), None, mark(1)), Recorded::Dropped(0));
        let mut batch = Vec::new();
        assert!(
            queue.take(&mut batch, Duration::from_secs(10)),
            "close never waits"
        );
        // Not lost from the run: recorded after it ended.
        assert_eq!(queue.counters().dropped, 0);
        assert_eq!(queue.counters().after_close, 1);
        assert_eq!(queue.counters().produced, queue.counters().queued);
    }
}
