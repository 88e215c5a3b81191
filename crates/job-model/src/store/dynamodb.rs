//! The AWS store: the `replication-jobs` DynamoDB table, one item per job and nothing else (an
//! operator's scan of it lists jobs only), and beside it the `replication-jobs-ledger` table
//! (the jobs table's name and [`LEDGER_SUFFIX`]) for the bookkeeping, keyed by `pk`:
//! `active-jobs` counts the jobs not yet finished (for `max_concurrent_jobs`), and
//! `idem#<sha256>` maps an owner's `Idempotency-Key` to its job. Creating a job writes all
//! three in one transaction; a transition into a terminal status decrements the counter in the
//! same transaction as the status change, which happens once per job, so the count stays exact.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, Put, ReturnValue, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use sha2::{Digest, Sha256};

use super::{
    check_legal, Change, Created, Cursor, Expect, JobStore, Page, ReconciledCount, StoreError,
};
use crate::item::{attr, from_item, num, to_attr, to_item, ts, Item};
use crate::job::{Job, Owner, Progress, Timestamp};
use crate::status::JobStatus;
use aws_sdk_dynamodb::types::AttributeValue as AV;

/// The table's default name.
pub const DEFAULT_TABLE: &str = "replication-jobs";
/// Index for listing and reaping by status: hash `status`, range `created_at`.
pub const STATUS_INDEX: &str = "status-created_at-index";
/// Index for listing a caller's jobs: hash `owner`, range `created_at`.
pub const OWNER_INDEX: &str = "owner-created_at-index";
/// The ledger table's name is the jobs table's with this suffix.
pub const LEDGER_SUFFIX: &str = "-ledger";
/// The ledger's key attribute.
pub const LEDGER_KEY_ATTR: &str = "pk";
/// The ledger item counting unfinished jobs.
pub const COUNTER_KEY: &str = "active-jobs";
const COUNTER_ATTR: &str = "active_jobs";
/// When the count last changed (Unix milliseconds), so that reconciling it can wait for quiet.
const COUNTER_CHANGED_ATTR: &str = "changed_at_ms";
/// A difference a reconciling pass found (the count, and the jobs it counted), corrected only
/// when the next pass finds the same.
const COUNTER_OBSERVED_WAS_ATTR: &str = "observed_count";
/// See [`COUNTER_OBSERVED_WAS_ATTR`].
const COUNTER_OBSERVED_ACTIVE_ATTR: &str = "observed_active";

/// The `active-jobs` item.
struct Counter {
    value: i64,
    changed_ms: i64,
    observed: Option<(i64, i64)>,
}

/// Jobs in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    ledger: String,
}

fn sdk_err<E, R>(op: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let retryable = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ServiceError(s) => matches!(
            s.err().code(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "TransactionConflictException"
            )
        ),
        _ => false,
    };
    StoreError::Backend {
        message: format!("DynamoDB {op}: {}", DisplayErrorContext(&e)),
        retryable,
    }
}

fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn key(job_id: &str) -> Item {
    Item::from([(attr::JOB_ID.to_owned(), AV::S(job_id.to_owned()))])
}

fn ledger_key(k: &str) -> Item {
    Item::from([(LEDGER_KEY_ATTR.to_owned(), AV::S(k.to_owned()))])
}

fn idempotency_item_key(owner: &Owner, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner.as_str().as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("idem#{}", hex::encode(h.finalize()))
}

fn s(v: &str) -> AV {
    AV::S(v.to_owned())
}

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        message: format!("DynamoDB request: {e}"),
        retryable: false,
    }
}

impl DynamoStore {
    /// A store on the jobs table `table` (and its ledger, `table` + [`LEDGER_SUFFIX`])
    /// through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            client,
            ledger: format!("{table}{LEDGER_SUFFIX}"),
            table,
        }
    }

    /// The jobs table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The ledger table's name (the active-job counter and the idempotency records).
    pub fn ledger_table(&self) -> &str {
        &self.ledger
    }

    /// Create the table as Terraform does (on-demand, both indexes, TTL on `ttl`), for tests
    /// and local development against a DynamoDB-compatible endpoint.
    ///
    /// # Errors
    /// Any DynamoDB error, including a table that exists already.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr_def = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_err)
        };
        let key_el = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .map_err(build_err)
        };
        let gsi = |name: &str, hash: &str| -> Result<GlobalSecondaryIndex, StoreError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key_el(hash, KeyType::Hash)?)
                .key_schema(key_el(attr::CREATED_AT, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_err)
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr_def(attr::JOB_ID)?)
            .attribute_definitions(attr_def(attr::STATUS)?)
            .attribute_definitions(attr_def(attr::CREATED_AT)?)
            .attribute_definitions(attr_def(attr::OWNER)?)
            .key_schema(key_el(attr::JOB_ID, KeyType::Hash)?)
            .global_secondary_indexes(gsi(STATUS_INDEX, attr::STATUS)?)
            .global_secondary_indexes(gsi(OWNER_INDEX, attr::OWNER)?)
            .send()
            .await
            .map_err(|e| sdk_err("CreateTable", e))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(attr::TTL)
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await
            .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
        self.client
            .create_table()
            .table_name(&self.ledger)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr_def(LEDGER_KEY_ATTR)?)
            .key_schema(key_el(LEDGER_KEY_ATTR, KeyType::Hash)?)
            .send()
            .await
            .map_err(|e| sdk_err("CreateTable", e))?;
        self.client
            .update_time_to_live()
            .table_name(&self.ledger)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(attr::TTL)
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await
            .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
        Ok(())
    }

    async fn read(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(job_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", e))?;
        out.item.as_ref().map(from_item).transpose()
    }

    /// After a failed condition: why it failed.
    async fn explain(&self, job_id: &str) -> StoreError {
        match self.read(job_id).await {
            Ok(Some(j)) => StoreError::Conflict {
                job_id: j.job_id,
                current: j.status,
                version: j.version,
            },
            Ok(None) => StoreError::NotFound(job_id.to_owned()),
            Err(e) => e,
        }
    }

    async fn query(
        &self,
        index: &str,
        hash: (&str, AV),
        filter_status: Option<JobStatus>,
        newest_first: bool,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        let now = Timestamp::now().unix_seconds();
        let mut jobs = Vec::new();
        let mut start = cursor.map(|c| {
            let mut k = key(&c.job_id);
            k.insert(attr::CREATED_AT.into(), ts(c.created_at));
            k.insert(hash.0.into(), hash.1.clone());
            k
        });
        loop {
            let want = limit as usize - jobs.len();
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#h = :h")
                .expression_attribute_names("#h", hash.0)
                .expression_attribute_values(":h", hash.1.clone())
                .scan_index_forward(!newest_first)
                .limit(i32::try_from(want).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            // Expired items linger until DynamoDB deletes them; never show them.
            let mut filter = String::from("#ttl > :now");
            q = q
                .expression_attribute_names("#ttl", attr::TTL)
                .expression_attribute_values(":now", num(now));
            if let Some(st) = filter_status {
                filter.push_str(" AND #st = :st");
                q = q
                    .expression_attribute_names("#st", attr::STATUS)
                    .expression_attribute_values(":st", s(st.as_str()));
            }
            let out = q
                .filter_expression(filter)
                .send()
                .await
                .map_err(|e| sdk_err("Query", e))?;
            for item in out.items() {
                jobs.push(from_item(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if jobs.len() < limit as usize => start = Some(k),
                Some(_) => {
                    return Ok(Page {
                        next: jobs.last().map(Cursor::after),
                        jobs,
                    })
                }
                None => return Ok(Page { jobs, next: None }),
            }
        }
    }

    fn counter_update(&self, delta: i64, limit: Option<u32>) -> Result<Update, StoreError> {
        let mut u = Update::builder()
            .table_name(&self.ledger)
            .set_key(Some(ledger_key(COUNTER_KEY)))
            .update_expression("ADD #n :d SET #ch = :now")
            .expression_attribute_names("#n", COUNTER_ATTR)
            .expression_attribute_names("#ch", COUNTER_CHANGED_ATTR)
            .expression_attribute_values(":d", num(delta))
            .expression_attribute_values(":now", num(Timestamp::now().unix_millis()));
        if let Some(limit) = limit {
            u = u
                .condition_expression("attribute_not_exists(#n) OR #n < :limit")
                .expression_attribute_values(":limit", num(limit));
        }
        u.build().map_err(build_err)
    }

    /// How many jobs of `status` exist and have not expired (a consistent count is not
    /// available from an index; a job that changed in the last second may be missed).
    async fn count_status(&self, status: JobStatus) -> Result<i64, StoreError> {
        let now = Timestamp::now().unix_seconds();
        let mut total = 0i64;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(STATUS_INDEX)
                .key_condition_expression("#st = :st")
                .filter_expression("#ttl > :now")
                .expression_attribute_names("#st", attr::STATUS)
                .expression_attribute_names("#ttl", attr::TTL)
                .expression_attribute_values(":st", s(status.as_str()))
                .expression_attribute_values(":now", num(now))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("Query", e))?;
            total += i64::from(out.count);
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(total),
            }
        }
    }

    /// The counter as stored; zeros when it does not exist.
    async fn read_counter(&self) -> Result<Counter, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.ledger)
            .set_key(Some(ledger_key(COUNTER_KEY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", e))?;
        let n = |name: &str| {
            out.item
                .as_ref()
                .and_then(|i| i.get(name))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        Ok(Counter {
            value: n(COUNTER_ATTR).unwrap_or(0),
            changed_ms: n(COUNTER_CHANGED_ATTR).unwrap_or(0),
            observed: n(COUNTER_OBSERVED_WAS_ATTR).zip(n(COUNTER_OBSERVED_ACTIVE_ATTR)),
        })
    }
}

type TxError = aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;

/// The cancellation reason codes of a cancelled transaction, one per item (`None` for an item
/// that was not at fault).
fn cancellation_codes(e: &TxError) -> Vec<Option<&str>> {
    match e {
        TxError::TransactionCanceledException(t) => t
            .cancellation_reasons()
            .iter()
            .map(aws_sdk_dynamodb::types::CancellationReason::code)
            .collect(),
        _ => Vec::new(),
    }
}

/// Which item of a cancelled transaction failed its condition.
fn failed_conditions(e: &TxError) -> Vec<bool> {
    cancellation_codes(e)
        .into_iter()
        .map(|c| c == Some("ConditionalCheckFailed"))
        .collect()
}

/// A failed transaction as a store error. One cancelled because another transaction was
/// writing the same item at that moment (every create and every finish writes the one
/// counter item), or because an item was throttled, did nothing and may be tried again.
fn tx_err<R: std::fmt::Debug>(e: SdkError<TxError, R>) -> StoreError {
    let transient = e.as_service_error().is_some_and(|s| {
        cancellation_codes(s).into_iter().any(|c| {
            matches!(
                c,
                Some("TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded")
            )
        })
    });
    match sdk_err("TransactWriteItems", e) {
        StoreError::Backend { message, retryable } => StoreError::Backend {
            message,
            retryable: retryable || transient,
        },
        other => other,
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create(&self, job: &Job, limit: Option<u32>) -> Result<Created, StoreError> {
        let put_job = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .build()
            .map_err(build_err)?;
        let mut tx = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put_job).build());
        let idem_key = job
            .idempotency_key
            .as_ref()
            .map(|k| idempotency_item_key(&job.owner, k));
        if let Some(ik) = &idem_key {
            let mut item = ledger_key(ik);
            item.insert("for_job_id".into(), s(&job.job_id));
            item.insert(attr::TTL.into(), num(job.ttl));
            let put = Put::builder()
                .table_name(&self.ledger)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_err)?;
            tx = tx.transact_items(TransactWriteItem::builder().put(put).build());
        }
        tx = tx.transact_items(
            TransactWriteItem::builder()
                .update(self.counter_update(1, limit)?)
                .build(),
        );
        match tx.send().await {
            Ok(_) => Ok(Created::New(job.clone())),
            Err(e) => {
                let failed = e
                    .as_service_error()
                    .map(failed_conditions)
                    .unwrap_or_default();
                if failed.first().copied().unwrap_or(false) {
                    // This job's (fresh, random) id exists already: an earlier attempt of this
                    // very create committed and its answer was lost.
                    if let Some(stored) = self.read(&job.job_id).await? {
                        return Ok(Created::New(stored));
                    }
                }
                let idem_failed = idem_key.is_some() && failed.get(1).copied().unwrap_or(false);
                let counter_failed = failed.last().copied().unwrap_or(false);
                if let (true, Some(ik)) = (idem_failed, &idem_key) {
                    let out = self
                        .client
                        .get_item()
                        .table_name(&self.ledger)
                        .set_key(Some(ledger_key(ik)))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| sdk_err("GetItem", e))?;
                    let earlier = match out.item.as_ref().and_then(|i| i.get("for_job_id")) {
                        Some(AV::S(id)) => self.read(id).await?,
                        _ => None,
                    };
                    return earlier
                        .map(Created::Existing)
                        .ok_or_else(|| StoreError::Backend {
                            message: "the idempotency key names a job that no longer exists; \
                                  submit with a new key"
                                .into(),
                            retryable: false,
                        });
                }
                if let (true, Some(limit)) = (counter_failed, limit) {
                    return Err(StoreError::LimitReached { limit });
                }
                Err(tx_err(e))
            }
        }
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self
            .read(job_id)
            .await?
            .filter(|j| j.ttl > Timestamp::now().unix_seconds()))
    }

    async fn list_by_owner(
        &self,
        owner: &Owner,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.query(
            OWNER_INDEX,
            (attr::OWNER, s(owner.as_str())),
            status,
            true,
            limit,
            cursor,
        )
        .await
    }

    async fn list_by_status(
        &self,
        status: JobStatus,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.query(
            STATUS_INDEX,
            (attr::STATUS, s(status.as_str())),
            None,
            false,
            limit,
            cursor,
        )
        .await
    }

    async fn transition(
        &self,
        job_id: &str,
        expect: Expect,
        change: Change,
    ) -> Result<Job, StoreError> {
        check_legal(expect.status, change.to)?;
        let mut sets = vec!["#st = :to", "updated_at = :at", "version = version + :one"];
        let mut values = vec![
            (":to", s(change.to.as_str())),
            (":at", ts(change.at)),
            (":one", num(1)),
            (":from", s(expect.status.as_str())),
        ];
        let mut names = vec![("#st", attr::STATUS)];
        let mut condition = String::from("#st = :from");
        if let Some(v) = expect.version {
            condition.push_str(" AND version = :v");
            values.push((":v", num(v)));
        }
        if let Some(i) = &expect.instance_id {
            condition.push_str(" AND instance_id = :held");
            values.push((":held", s(i)));
        }
        if change.to == JobStatus::Running {
            // The first claim's: a later attempt's worker resumes the same job.
            sets.push("started_at = if_not_exists(started_at, :at)");
            sets.push("heartbeat_at = :at");
        }
        if change.to.is_terminal() {
            sets.push("finished_at = :at");
        }
        if let Some(i) = &change.instance_id {
            sets.push("instance_id = :iid");
            values.push((":iid", s(i)));
        }
        if let Some(e) = &change.error {
            sets.push("#err = :err");
            names.push(("#err", attr::ERROR));
            values.push((":err", to_attr(e)));
        }
        if let Some(p) = &change.progress {
            sets.push("progress = :p");
            values.push((":p", to_attr(p)));
        }
        if let Some(r) = &change.result {
            sets.push("#res = :res");
            names.push(("#res", attr::RESULT));
            values.push((":res", to_attr(r)));
        }
        if let Some(a) = change.attempt {
            sets.push("attempt = :att");
            values.push((":att", num(a)));
        }
        if let Some(w) = &change.worker {
            sets.push("workers = list_append(if_not_exists(workers, :nil), :w)");
            values.push((":nil", AV::L(Vec::new())));
            values.push((":w", AV::L(vec![to_attr(w)])));
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if change.to.is_terminal() {
            // The sealed URLs are needed by the worker only: gone from the item (and from
            // later backups) the moment the job ends, not after the 30-day TTL.
            expression.push_str(" REMOVE source_secret, target_secret");
        }
        let attr_names = names
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let attr_values = values
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Item>();

        if change.to.is_terminal() {
            // The status change and the active-job count move together.
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(job_id)))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(attr_names))
                .set_expression_attribute_values(Some(attr_values))
                .build()
                .map_err(build_err)?;
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(
                    TransactWriteItem::builder()
                        .update(self.counter_update(-1, None)?)
                        .build(),
                )
                .send()
                .await;
            return match result {
                Ok(_) => self
                    .read(job_id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(job_id.to_owned())),
                Err(e) => {
                    let failed = e
                        .as_service_error()
                        .map(failed_conditions)
                        .unwrap_or_default();
                    if failed.first().copied().unwrap_or(false) {
                        Err(self.explain(job_id).await)
                    } else {
                        Err(tx_err(e))
                    }
                }
            };
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_id)))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(attr_names))
            .set_expression_attribute_values(Some(attr_values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => from_item(&out.attributes.unwrap_or_default()),
            Err(e) if is_condition_failed(&e) => Err(self.explain(job_id).await),
            Err(e) => Err(sdk_err("UpdateItem", e)),
        }
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        instance_id: &str,
        progress: Option<&Progress>,
        at: Timestamp,
    ) -> Result<Job, StoreError> {
        let mut expression =
            String::from("SET heartbeat_at = :at, updated_at = :at, version = version + :one");
        let mut q = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_id)))
            .condition_expression("#st = :running AND instance_id = :iid")
            .expression_attribute_names("#st", attr::STATUS)
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":iid", s(instance_id))
            .expression_attribute_values(":at", ts(at))
            .expression_attribute_values(":one", num(1))
            .return_values(ReturnValue::AllNew);
        if let Some(p) = progress {
            expression.push_str(", progress = :p");
            q = q.expression_attribute_values(":p", to_attr(p));
        }
        match q.update_expression(expression).send().await {
            Ok(out) => from_item(&out.attributes.unwrap_or_default()),
            Err(e) if is_condition_failed(&e) => Err(self.explain(job_id).await),
            Err(e) => Err(sdk_err("UpdateItem", e)),
        }
    }

    async fn reconcile_active(
        &self,
        quiet: std::time::Duration,
    ) -> Result<Option<ReconciledCount>, StoreError> {
        let counter = self.read_counter().await?;
        let (was, changed_ms) = (counter.value, counter.changed_ms);
        let now_ms = Timestamp::now().unix_millis();
        let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(changed_ms) < quiet_ms {
            return Ok(None);
        }
        // Three listings one after the other, from an index that lags: a job moving from one
        // status to the next between them is counted twice or not at all. So a difference is
        // only noted the first time, and corrected when the next pass finds the same one.
        let mut active = 0;
        for st in [
            JobStatus::Pending,
            JobStatus::Provisioning,
            JobStatus::Running,
        ] {
            active += self.count_status(st).await?;
        }
        let confirmed = counter.observed == Some((was, active));
        let mut u = self
            .client
            .update_item()
            .table_name(&self.ledger)
            .set_key(Some(ledger_key(COUNTER_KEY)))
            // Only if nothing moved the count since it was read: a create or a finish
            // meanwhile leaves the question to a later pass.
            .condition_expression(
                "(attribute_not_exists(#n) OR #n = :was) AND \
                 (attribute_not_exists(#ch) OR #ch = :changed)",
            )
            .expression_attribute_names("#n", COUNTER_ATTR)
            .expression_attribute_names("#ch", COUNTER_CHANGED_ATTR)
            .expression_attribute_names("#ow", COUNTER_OBSERVED_WAS_ATTR)
            .expression_attribute_names("#oa", COUNTER_OBSERVED_ACTIVE_ATTR)
            .expression_attribute_values(":was", num(was))
            .expression_attribute_values(":changed", num(changed_ms));
        u = if active == was {
            if counter.observed.is_none() {
                return Ok(None);
            }
            u.update_expression("REMOVE #ow, #oa")
        } else if confirmed {
            u.update_expression("SET #n = :active, #ch = :now REMOVE #ow, #oa")
                .expression_attribute_values(":active", num(active))
                .expression_attribute_values(":now", num(now_ms))
        } else {
            u.update_expression("SET #ow = :was, #oa = :active")
                .expression_attribute_values(":active", num(active))
        };
        match u.send().await {
            Ok(_) if confirmed && active != was => Ok(Some(ReconciledCount { was, now: active })),
            Ok(_) => Ok(None),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(sdk_err("UpdateItem", e)),
        }
    }

    async fn request_cancel(&self, job_id: &str, at: Timestamp) -> Result<Job, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_id)))
            .update_expression(
                "SET cancel_requested_at = if_not_exists(cancel_requested_at, :at), \
                 updated_at = :at, version = version + :one",
            )
            .condition_expression("attribute_exists(job_id) AND #st IN (:p, :pr, :r)")
            .expression_attribute_names("#st", attr::STATUS)
            .expression_attribute_values(":p", s(JobStatus::Pending.as_str()))
            .expression_attribute_values(":pr", s(JobStatus::Provisioning.as_str()))
            .expression_attribute_values(":r", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":at", ts(at))
            .expression_attribute_values(":one", num(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => from_item(&out.attributes.unwrap_or_default()),
            Err(e) if is_condition_failed(&e) => Err(self.explain(job_id).await),
            Err(e) => Err(sdk_err("UpdateItem", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::error::TransactionCanceledException;
    use aws_sdk_dynamodb::types::CancellationReason;

    fn cancelled(codes: &[&str]) -> SdkError<TxError, ()> {
        let mut t = TransactionCanceledException::builder().message("cancelled");
        for c in codes {
            t = t.cancellation_reasons(CancellationReason::builder().code(*c).build());
        }
        SdkError::service_error(TxError::TransactionCanceledException(t.build()), ())
    }

    #[test]
    fn a_transaction_cancelled_by_a_conflict_may_be_retried_one_refused_by_a_condition_not() {
        assert!(tx_err(cancelled(&["None", "TransactionConflict"])).is_retryable());
        assert!(tx_err(cancelled(&["ThrottlingError", "None"])).is_retryable());
        assert!(!tx_err(cancelled(&["None", "ConditionalCheckFailed"])).is_retryable());
        assert!(!tx_err(cancelled(&["ValidationError"])).is_retryable());
        assert_eq!(
            failed_conditions(
                cancelled(&["None", "ConditionalCheckFailed"])
                    .as_service_error()
                    .unwrap()
            ),
            vec![false, true]
        );
    }
}
