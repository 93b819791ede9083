//! Per-user rate limits that hold across every server on the database: a
//! token bucket per user and action in `srv_rate`, refilled by the
//! database's clock (one clock for all servers), taken under a row lock.

use super::*;

impl PgStore {
    /// Takes a token of `user`'s bucket `what` (`per_min` a minute, burst
    /// `per_min`), or says how long until one is there.
    pub(super) async fn take_(
        &self,
        user: UserId,
        what: &str,
        per_min: u32,
    ) -> Result<std::result::Result<(), Duration>> {
        let capacity = f64::from(per_min.max(1));
        let per_sec = capacity / 60.0;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        exec(
            &tx,
            "INSERT INTO srv_rate (user_id, what, tokens, at) VALUES ($1, $2, $3, clock_timestamp())
             ON CONFLICT (user_id, what) DO NOTHING",
            &[&user, &what, &capacity],
        )
        .await?;
        let tokens: f64 = one(
            &tx,
            "SELECT least($3::float8, tokens + greatest(0, extract(epoch FROM clock_timestamp() - at))::float8 * $4::float8)
             FROM srv_rate WHERE user_id = $1 AND what = $2 FOR UPDATE",
            &[&user, &what, &capacity, &per_sec],
        )
        .await?
        .get(0);
        let (left, outcome) = if tokens >= 1.0 {
            (tokens - 1.0, Ok(()))
        } else {
            let wait = (1.0 - tokens) / per_sec;
            (
                tokens,
                Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1))),
            )
        };
        exec(
            &tx,
            "UPDATE srv_rate SET tokens = $3, at = clock_timestamp() WHERE user_id = $1 AND what = $2",
            &[&user, &what, &left],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(outcome)
    }
}
