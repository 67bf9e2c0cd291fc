//! The PostgreSQL probe (`promotion-gate: postgres`): [`crate::pg::RecoveryProbe`] on one
//! connection kept for the gate episode, read as a gate verdict.

use super::{Outcome, Status, Verdict};
use crate::pg::{Recovery, RecoveryProbe};

/// One PostgreSQL server, asked over one connection.
pub(super) struct PostgresProbe(RecoveryProbe);

impl PostgresProbe {
    pub(super) const fn new(config: tokio_postgres::Config) -> Self {
        Self(RecoveryProbe::new(config))
    }

    /// Ask once: open (read-write) when `pg_is_in_recovery()` is false.
    pub(super) async fn probe(&mut self) -> Verdict {
        match self.0.check().await {
            Recovery::NotInRecovery => Verdict::Ready(Outcome::Primary),
            Recovery::InRecovery => Verdict::NotYet("pg_is_in_recovery() is true".to_owned()),
            Recovery::Failed(why) => Verdict::Wait(why),
        }
    }

    /// Ask once while the VIP answers (the hold check).
    pub(super) async fn status(&mut self) -> Status {
        match self.0.check().await {
            Recovery::NotInRecovery => Status::Primary {
                failsafe: super::Failsafe::Off,
                started: None,
            },
            Recovery::InRecovery => Status::NotPrimary("pg_is_in_recovery() is true".to_owned()),
            Recovery::Failed(why) => Status::Unknown(why),
        }
    }

    /// Drop the connection (after a timeout its state is unknown).
    pub(super) fn reset(&mut self) {
        self.0.reset();
    }
}
