//! A multi-tenant source for subsets and masking: a three-level foreign-key chain `orgs` ← `users` ← `orders`, each
//! with `tenant_id` in its replica identity (a unique `(id, tenant_id)` index), and the shapes a subset must get
//! right. Tenants 1 to 5; tenant 3 is the one the tests keep:
//! - 2 of tenant 3's users belong to an org of tenant 4 (their parent is outside the tenant);
//! - 3 of tenant 3's orders are placed by users of tenant 5 (two levels outside: that user and their org);
//! - `orders.approved_by` has no foreign key yet: 4 of tenant 3's orders name an approver of tenant 1 (a row the
//!   subset leaves out, not an orphan), and [`TRUE_ORPHANS`] of them an approver that does not exist; tenant 2
//!   has 5 such true orphans too, outside the subset;
//! - `users.email` has mixed-case duplicates (`lower(email)` groups) and NULLs, and `users.name` is personal.

use understudy::pg::{PgError, quote_ident};

use crate::source::{REPLICATOR, SourceServer};

/// Orders of tenant 3 whose approver does not exist anywhere.
pub const TRUE_ORPHANS: i64 = 7;
/// The tenant the tests keep.
pub const TENANT: i32 = 3;

pub const SCHEMA: &str = "
CREATE TABLE orgs (id bigint PRIMARY KEY, tenant_id int NOT NULL, name text NOT NULL);
CREATE UNIQUE INDEX orgs_identity ON orgs (id, tenant_id);
ALTER TABLE orgs REPLICA IDENTITY USING INDEX orgs_identity;
CREATE TABLE users (id bigint PRIMARY KEY, tenant_id int NOT NULL, org_id bigint NOT NULL REFERENCES orgs,
                    email text, name text);
CREATE UNIQUE INDEX users_identity ON users (id, tenant_id);
ALTER TABLE users REPLICA IDENTITY USING INDEX users_identity;
CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id int NOT NULL, user_id bigint NOT NULL REFERENCES users,
                     approved_by bigint, amount int NOT NULL, note text);
CREATE UNIQUE INDEX orders_identity ON orders (id, tenant_id);
ALTER TABLE orders REPLICA IDENTITY USING INDEX orders_identity;

INSERT INTO orgs SELECT t * 10 + k, t, 'org ' || t || '-' || k FROM generate_series(1, 5) t, generate_series(1, 3) k;
-- 40 users per tenant, ids t * 1000 + u; the first two of tenant 3 belong to an org of tenant 4.
INSERT INTO users
SELECT t * 1000 + u, t,
       CASE WHEN t = 3 AND u <= 2 THEN 41 ELSE t * 10 + 1 + u % 3 END,
       CASE WHEN u % 10 = 0 THEN NULL
            WHEN u <= 6 THEN 'Person' || t || '-' || u || '@Example.com'
            WHEN u <= 12 THEN 'person' || t || '-' || (u - 6) || '@example.com'
            ELSE 'user' || t || '-' || u || '@example.com' END,
       CASE WHEN u % 7 = 0 THEN NULL ELSE 'Name ' || t || ' ' || u END
FROM generate_series(1, 5) t, generate_series(1, 40) u;
-- 100 orders per tenant, ids t * 100000 + o.
INSERT INTO orders
SELECT t * 100000 + o, t,
       CASE WHEN t = 3 AND o <= 3 THEN 5000 + o ELSE t * 1000 + 1 + o % 40 END,
       CASE WHEN t = 3 AND o BETWEEN 11 AND 14 THEN 1000 + o
            WHEN t = 3 AND o BETWEEN 21 AND 27 THEN 999000 + o
            WHEN t = 2 AND o BETWEEN 21 AND 25 THEN 888000 + o
            ELSE t * 1000 + 1 + (o + 5) % 40 END,
       o * 3, repeat('x', 100)
FROM generate_series(1, 5) t, generate_series(1, 100) o;
ANALYZE orgs, users, orders;
";

/// A source database `shop` with the tenant schema, its tables owned by the replication role (so that it may
/// create a filtered publication of them) and that role allowed to create one.
pub async fn source(root: &std::path::Path) -> Result<SourceServer, PgError> {
    let source = SourceServer::start(root, "shop", &[]).await?;
    let r = quote_ident(REPLICATOR);
    let admin = source.admin().await?;
    admin
        .batch_execute(SCHEMA)
        .await
        .map_err(PgError::sql("creating the tenant schema"))?;
    admin
        .batch_execute(&format!(
            "GRANT CREATE ON DATABASE shop TO {r}; ALTER TABLE orgs OWNER TO {r}; ALTER TABLE users OWNER TO {r}; \
             ALTER TABLE orders OWNER TO {r};"
        ))
        .await
        .map_err(PgError::sql("letting the replication role publish the tenant tables"))?;
    Ok(source)
}
