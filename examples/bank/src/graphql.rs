//! The bank's GraphQL objects, merged with Tidemark's built-in schema: commands as
//! mutations (each returns the position to wait for) and read models as queries.
//!
//! Read-your-writes: a mutation returns `position`; a following query can put
//! `@waitFor(projection: "account_balances", position: <it>)` on the field it reads.

use crate::domain::{
    self, Account, AccountCommand, BankError, Customer, CustomerCommand, Order, OrderCommand,
};
use async_graphql::{Context, Object, SimpleObject};
use tidemark_api::{ApiError, ApiResult, Int64, Role, RoleGuard, Tidemark};
use tidemark_store::aggregate::{CommandError, CommandOutcome};
use tidemark_store::StoreError;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

/// What a command did.
#[derive(SimpleObject, Debug, Clone)]
pub struct CommandResult {
    pub stream_id: String,
    /// The stream's version after the command.
    pub stream_version: Option<Int64>,
    /// Global position of the last event written (0 when nothing changed): pass it to
    /// `@waitFor` to read your own write.
    pub position: Int64,
    /// Whether the command wrote events (false when it changed nothing). For a retried
    /// command (`duplicate`), whether its first execution did.
    pub changed: bool,
    /// True when a command with this `commandId` had already taken effect: nothing new was
    /// written, and this result is the first execution's.
    pub duplicate: bool,
}

impl From<CommandOutcome> for CommandResult {
    fn from(outcome: CommandOutcome) -> Self {
        CommandResult {
            position: Int64(outcome.position()),
            // The bus writes with ids of its own (fresh, or derived from the command id), so
            // events it reports are this command's, written now or by its first execution.
            changed: outcome
                .append
                .as_ref()
                .is_some_and(|a| !a.events.is_empty()),
            duplicate: outcome.duplicate,
            stream_id: outcome.stream_id,
            stream_version: outcome.stream_version.map(Int64),
        }
    }
}

/// An account as the `account_balances` read model has it.
#[derive(SimpleObject, Debug, Clone)]
pub struct AccountView {
    pub id: String,
    pub owner: Option<String>,
    /// In cents.
    pub balance: i64,
    /// Version of the last event applied to this row.
    pub version: Int64,
}

/// An order as the `orders` read model has it.
#[derive(SimpleObject, Debug, Clone)]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    pub account_id: String,
    pub amount: i64,
    /// placed | paid | shipped | cancelled
    pub status: String,
}

/// Events and amounts per category and type, over every stream (`category_totals`).
#[derive(SimpleObject, Debug, Clone)]
pub struct CategoryTotal {
    pub category: String,
    pub event_type: String,
    pub events: Int64,
    pub amount: i64,
}

/// Runs a query of a read model and turns each row into a view with `view`.
async fn read_rows<T>(
    ctx: &Context<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    view: impl FnMut(&Row) -> T,
) -> ApiResult<Vec<T>> {
    let pool = Tidemark::from_ctx(ctx)?.store().pool();
    // The store's reading of a failed checkout (the database is unavailable: retry).
    let client = pool.get().await.map_err(StoreError::from)?;
    let rows = client
        .query(sql, params)
        .await
        .map_err(ApiError::internal)?;
    Ok(rows.iter().map(view).collect())
}

fn positive_limit(first: i32) -> ApiResult<i64> {
    if !(1..=1000).contains(&first) {
        return Err(ApiError::bad_input(
            "first",
            "first must be between 1 and 1000",
        ));
    }
    Ok(i64::from(first))
}

/// The `account_balances` columns [`account_view`] reads.
const ACCOUNTS: &str =
    "SELECT account_id, owner, balance, version FROM rm_account_balances.balances";

/// Account `id` from a row selected by [`ACCOUNTS`].
fn account_view(id: String, r: &Row) -> AccountView {
    AccountView {
        id,
        owner: r.get(1),
        balance: r.get(2),
        version: Int64(r.get(3)),
    }
}

/// Queries of the bank's read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct BankQuery;

#[Object]
impl BankQuery {
    /// One account's balance.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn account(&self, ctx: &Context<'_>, id: String) -> ApiResult<Option<AccountView>> {
        let sql = format!("{ACCOUNTS} WHERE account_id = $1");
        let rows = read_rows(ctx, &sql, &[&Account::stream_id_of(&id)], |r| {
            account_view(id.clone(), r)
        })
        .await?;
        // At most one: `account_id` is the table's key.
        Ok(rows.into_iter().next())
    }

    /// Accounts, largest balance first.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn accounts(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<AccountView>> {
        let limit = positive_limit(first)?;
        let sql = format!("{ACCOUNTS} ORDER BY balance DESC, account_id LIMIT $1");
        read_rows(ctx, &sql, &[&limit], |r| {
            let stream_id: String = r.get(0);
            account_view(stream_id.trim_start_matches("account-").to_string(), r)
        })
        .await
    }

    /// One order.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn order(&self, ctx: &Context<'_>, id: String) -> ApiResult<Option<OrderView>> {
        Ok(orders_where(ctx, Some(id), None, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Orders, newest change first, optionally only those with `status`.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<OrderView>> {
        orders_where(ctx, None, status, positive_limit(first)?).await
    }

    /// Event counts and amount sums per category and event type, across all streams.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn category_totals(&self, ctx: &Context<'_>) -> ApiResult<Vec<CategoryTotal>> {
        read_rows(
            ctx,
            "SELECT category, event_type, events, amount FROM rm_category_totals.totals ORDER BY category, event_type",
            &[],
            |r| CategoryTotal {
                category: r.get(0),
                event_type: r.get(1),
                events: Int64(r.get(2)),
                amount: r.get(3),
            },
        )
        .await
    }
}

async fn orders_where(
    ctx: &Context<'_>,
    id: Option<String>,
    status: Option<String>,
    limit: i64,
) -> ApiResult<Vec<OrderView>> {
    read_rows(
        ctx,
        "SELECT order_id, customer_id, account_id, amount, status FROM rm_orders.orders
          WHERE ($1::text IS NULL OR order_id = $1) AND ($2::text IS NULL OR status = $2)
          ORDER BY updated_position DESC LIMIT $3",
        &[&id, &status, &limit],
        |r| OrderView {
            id: r.get(0),
            customer_id: r.get(1),
            account_id: r.get(2),
            amount: r.get(3),
            status: r.get(4),
        },
    )
    .await
}

/// The bank's commands. Each refuses what breaks a rule with code `REJECTED` and a sentence.
#[derive(Debug, Clone, Copy, Default)]
pub struct BankMutation;

/// Writes the `#[Object]` impl of [`BankMutation`] from its commands, each written as
/// `fn name(ctx, command_id; arguments) { body }`. Every command needs the `Append` role,
/// takes the client's `commandId` as its last argument and answers a [`CommandResult`]:
/// spelled once here, so that guard, argument and description cannot differ between commands.
/// The body names the context and the command id itself (macro hygiene hides the macro's).
macro_rules! command_mutations {
    ($(
        $(#[doc = $doc:literal])+
        fn $name:ident($ctx:ident, $command_id:ident; $($arg:ident: $ty:ty),+) $body:block
    )+) => {
        #[Object]
        impl BankMutation {$(
            $(#[doc = $doc])+
            #[graphql(guard = "RoleGuard(Role::Append)")]
            async fn $name(
                &self,
                $ctx: &Context<'_>,
                $($arg: $ty,)+
                #[graphql(
                    desc = "The client's id for this command, a UUID made once per command: sent again with it (after OUTCOME_UNKNOWN or a lost answer), the command is applied at most once"
                )]
                $command_id: Option<Uuid>,
            ) -> ApiResult<CommandResult> $body
        )+}
    };
}

command_mutations! {
    /// Registers a customer (once; the email must look like one).
    fn register_customer(ctx, command_id; customer_id: String, name: String, email: String) {
        let command = CustomerCommand::Register {
            customer_id: customer_id.clone(),
            name,
            email,
        };
        run::<Customer>(ctx, &customer_id, &command, command_id).await
    }

    /// Opens an account for `owner`.
    fn open_account(ctx, command_id; account_id: String, owner: String) {
        let command = AccountCommand::Open {
            account_id: account_id.clone(),
            owner,
        };
        run::<Account>(ctx, &account_id, &command, command_id).await
    }

    /// Deposits `amount` cents.
    fn deposit(ctx, command_id; account_id: String, amount: i64) {
        let command = AccountCommand::Deposit { amount };
        run::<Account>(ctx, &account_id, &command, command_id).await
    }

    /// Withdraws `amount` cents; never below zero.
    fn withdraw(ctx, command_id; account_id: String, amount: i64) {
        let command = AccountCommand::Withdraw { amount };
        run::<Account>(ctx, &account_id, &command, command_id).await
    }

    /// Closes an account with a zero balance.
    fn close_account(ctx, command_id; account_id: String) {
        run::<Account>(ctx, &account_id, &AccountCommand::Close, command_id).await
    }

    /// Places an order for a registered customer, to be paid from an open account.
    fn place_order(
        ctx, command_id;
        order_id: String, customer_id: String, account_id: String, amount: i64
    ) {
        let bus = Tidemark::from_ctx(ctx)?.commands();
        let (customer, _) = bus.load::<Customer>(&customer_id).await?;
        if customer.id.is_none() {
            return Err(CommandError::Rejected(BankError::UnknownCustomer(customer_id)).into());
        }
        let (account, _) = bus.load::<Account>(&account_id).await?;
        if account.owner.is_none() {
            return Err(CommandError::Rejected(BankError::UnknownAccount(account_id)).into());
        }
        if account.closed {
            return Err(CommandError::Rejected(BankError::AccountClosed(account_id)).into());
        }
        let command = OrderCommand::Place {
            order_id: order_id.clone(),
            customer_id,
            account_id,
            amount,
        };
        run::<Order>(ctx, &order_id, &command, command_id).await
    }

    /// Pays an order from its account (no overdraft; safe to retry).
    fn pay_order(ctx, command_id; order_id: String) {
        let bus = Tidemark::from_ctx(ctx)?.commands();
        let options = Tidemark::command_options(ctx).command_id(command_id);
        Ok(domain::pay_order(bus, &order_id, options).await?.into())
    }

    /// Ships a paid order.
    fn ship_order(ctx, command_id; order_id: String) {
        run::<Order>(ctx, &order_id, &OrderCommand::Ship, command_id).await
    }

    /// Cancels an order that has not shipped.
    fn cancel_order(ctx, command_id; order_id: String) {
        run::<Order>(ctx, &order_id, &OrderCommand::Cancel, command_id).await
    }
}

async fn run<A>(
    ctx: &Context<'_>,
    id: &str,
    command: &A::Command,
    command_id: Option<Uuid>,
) -> ApiResult<CommandResult>
where
    A: tidemark_store::aggregate::Aggregate<Error = domain::BankError>,
{
    if id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_input(
            "id",
            "ids must be 1 to 100 printable characters",
        ));
    }
    let bus = Tidemark::from_ctx(ctx)?.commands();
    let options = Tidemark::command_options(ctx).command_id(command_id);
    Ok(domain::execute::<A>(bus, id, command, options)
        .await?
        .into())
}

trait StreamIdOf {
    fn stream_id_of(id: &str) -> String;
}

impl<A: tidemark_store::aggregate::Aggregate> StreamIdOf for A {
    fn stream_id_of(id: &str) -> String {
        A::stream_id(id)
    }
}
