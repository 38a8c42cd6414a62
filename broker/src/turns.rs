//! First-come, first-served turns among the tasks of one shard: a FIFO lock without data.
//!
//! A place in line is taken synchronously ([`TurnQueue::ticket`]), so the order of turns is
//! the order of the `ticket` calls, never the order in which the executor happens to poll
//! the waiting tasks. (glommio's `Semaphore` is not fair in that sense: a task that asks
//! for a permit just released takes it ahead of the waiter that release woke.)
//!
//! Lifecycle: a [`Ticket`] is awaited for its [`Turn`]; dropping the `Turn` passes the turn to
//! the next ticket. A ticket dropped before its turn gives up its place (the queue skips it),
//! so a cancelled waiter never blocks the ones behind it. Owned by one shard (`!Send`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// See the module docs.
#[derive(Default)]
pub struct TurnQueue {
    state: Rc<QueueState>,
}

#[derive(Default)]
struct QueueState {
    /// The number the next ticket gets.
    next_ticket: Cell<u64>,
    /// The ticket whose turn it is (it may not have been polled yet).
    serving: Cell<u64>,
    /// Tickets dropped before their turn, skipped when the turn reaches them.
    abandoned: RefCell<BTreeSet<u64>>,
    /// Wakers of tickets polled before their turn.
    waiting: RefCell<HashMap<u64, Waker>>,
    /// A [`Turn`] is out (there is never more than one).
    held: Cell<bool>,
}

impl QueueState {
    /// Ends the current turn and wakes the next live ticket.
    fn advance(&self) {
        assert!(!self.held.get(), "the turn moved on while it was held");
        let mut next = self.serving.get() + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        // Skipping stops at the first live ticket, or at the number the next one will get.
        assert!(
            next <= self.next_ticket.get(),
            "serving ticket {next} before it was issued"
        );
        self.serving.set(next);
        let waker = self.waiting.borrow_mut().remove(&next);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl TurnQueue {
    /// Takes the next place in line, now.
    pub fn ticket(&self) -> Ticket {
        let number = self.state.next_ticket.get();
        self.state.next_ticket.set(number + 1);
        Ticket {
            state: self.state.clone(),
            number,
            served: false,
        }
    }

    /// Tickets taken and not yet finished with (their turns not ended, nor given up).
    pub fn waiting(&self) -> u64 {
        let queued = self.state.next_ticket.get() - self.state.serving.get();
        queued - self.state.abandoned.borrow().len() as u64
    }
}

/// A place in a [`TurnQueue`]; resolves to the [`Turn`] once every ticket before it is done.
#[must_use = "a ticket holds a place in line until it is awaited or dropped"]
pub struct Ticket {
    state: Rc<QueueState>,
    number: u64,
    /// The turn was handed out; dropping the ticket changes nothing then.
    served: bool,
}

impl Future for Ticket {
    type Output = Turn;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn> {
        assert!(!self.served, "a ticket is awaited once");
        // The turn passes a ticket only once it is served or given up: a live one is never
        // behind the turn, so turns go in the order tickets were issued.
        assert!(
            self.number >= self.state.serving.get(),
            "ticket {} was passed over",
            self.number
        );
        if self.state.serving.get() == self.number {
            assert!(!self.state.held.get(), "two turns held at once");
            self.state.held.set(true);
            self.served = true;
            self.state.waiting.borrow_mut().remove(&self.number);
            return Poll::Ready(Turn {
                state: self.state.clone(),
                number: self.number,
            });
        }
        self.state
            .waiting
            .borrow_mut()
            .insert(self.number, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        self.state.waiting.borrow_mut().remove(&self.number);
        if self.state.serving.get() == self.number {
            // Its turn had come and nobody took it: pass it on.
            self.state.advance();
        } else {
            assert!(
                self.number > self.state.serving.get(),
                "ticket {} was passed over",
                self.number
            );
            self.state.abandoned.borrow_mut().insert(self.number);
        }
    }
}

/// The holder's turn; the next ticket's begins when this is dropped.
pub struct Turn {
    state: Rc<QueueState>,
    /// The ticket this turn was handed to.
    number: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        assert!(
            self.state.held.get() && self.state.serving.get() == self.number,
            "turn {} ended while ticket {} was being served",
            self.number,
            self.state.serving.get()
        );
        self.state.held.set(false);
        self.state.advance();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::future::join_all;

    use super::*;

    use crate::test_executor::run;

    #[test]
    fn turns_follow_ticket_order_not_poll_order() {
        run(|| async {
            let queue = TurnQueue::default();
            let order = Rc::new(RefCell::new(Vec::new()));
            let tickets: Vec<_> = (0..5).map(|_| queue.ticket()).collect();
            // Polled in reverse: the later tickets must still wait for the earlier ones.
            let holders = tickets
                .into_iter()
                .enumerate()
                .rev()
                .map(|(index, ticket)| {
                    let order = order.clone();
                    glommio::spawn_local(async move {
                        let _turn = ticket.await;
                        order.borrow_mut().push(index);
                        // Hold the turn across an await, as an append does.
                        glommio::timer::sleep(Duration::from_micros(100)).await;
                    })
                });
            join_all(holders.collect::<Vec<_>>()).await;
            assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
            assert_eq!(queue.waiting(), 0);
        });
    }

    /// The case glommio's semaphore gets wrong: a turn released while the next waiter is
    /// woken but not yet run, and a newcomer asking right then, must go to the waiter.
    #[test]
    fn a_newcomer_does_not_overtake_a_woken_waiter() {
        run(|| async {
            let queue = Rc::new(TurnQueue::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = queue.ticket().await;
            let second = queue.ticket();
            let waiter = {
                let order = order.clone();
                glommio::spawn_local(async move {
                    let _turn = second.await;
                    order.borrow_mut().push("waiter");
                })
            };
            glommio::executor().yield_task_queue_now().await;
            drop(first);
            let newcomer = queue.ticket().await;
            order.borrow_mut().push("newcomer");
            drop(newcomer);
            waiter.await;
            assert_eq!(*order.borrow(), vec!["waiter", "newcomer"]);
        });
    }

    /// The line's own bookkeeping catches a second release of one turn: passing the turn on
    /// while it is held would let two tasks in at once.
    #[test]
    #[should_panic(expected = "the turn moved on while it was held")]
    fn moving_the_turn_on_while_it_is_held_panics() {
        let queue = TurnQueue::default();
        let mut first = std::pin::pin!(queue.ticket());
        let waker = futures::task::noop_waker();
        let Poll::Ready(_turn) = first.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!("the first ticket's turn is now");
        };
        queue.state.advance();
    }

    #[test]
    fn abandoned_tickets_are_skipped() {
        run(|| async {
            let queue = TurnQueue::default();
            let first = queue.ticket().await;
            let gives_up = queue.ticket();
            let third = queue.ticket();
            let fourth = queue.ticket();
            drop(gives_up);
            drop(fourth);
            assert_eq!(queue.waiting(), 2, "the holder and the third");
            drop(first);
            let turn = third.await;
            drop(turn);
            assert_eq!(queue.waiting(), 0);
            // A ticket whose turn came and that was never polled passes it on when dropped.
            let unpolled = queue.ticket();
            let after = queue.ticket();
            drop(unpolled);
            drop(after.await);
            assert_eq!(queue.waiting(), 0);
        });
    }
}
