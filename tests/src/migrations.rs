//! The demo's curated migrations: one for each of the five failure patterns of the seed article (lock contention
//! under traffic, NOT NULL over old NULLs, a non-concurrent index, a foreign key over orphans, a transformation
//! wrong on edge cases), one safe migration, and one whose rollback loses data. The shapes they trip over are in
//! [`SEED`].

/// Extra production shapes: accounts with 123 NULL plans, 37 orphaned org references and 500 plan notes; users
/// with 15 mixed-case duplicate e-mail pairs and 9 NULL e-mails.
pub const SEED: &str = "
CREATE TABLE orgs (id int PRIMARY KEY, name text);
INSERT INTO orgs SELECT g, 'org ' || g FROM generate_series(1, 50) g;
CREATE TABLE accounts (id int PRIMARY KEY, org_id int, plan text, plan_note text);
INSERT INTO accounts
SELECT g,
       CASE WHEN g <= 37 THEN 900 + g ELSE 1 + g % 50 END,
       CASE WHEN g % 8 = 0 AND g <= 984 THEN NULL ELSE 'basic' END,
       CASE WHEN g % 2 = 0 THEN 'note ' || g END
FROM generate_series(1, 1000) g;
CREATE TABLE users (id int PRIMARY KEY, email text);
INSERT INTO users SELECT g, CASE WHEN g <= 15 THEN 'Person' || g || '@Example.com'
                               WHEN g <= 30 THEN 'person' || (g - 15) || '@example.com'
                               WHEN g <= 39 THEN NULL
                               ELSE 'user' || g || '@example.com' END
FROM generate_series(1, 200) g;
";

/// One curated migration.
#[derive(Debug, Clone, Copy)]
pub struct Curated {
    /// A short name (also the report file's name).
    pub name: &'static str,
    /// What the seed article calls it.
    pub pattern: &'static str,
    pub up: &'static str,
    pub down: Option<&'static str>,
    pub checks: Option<&'static str>,
    /// A long transaction production has at that hour (table, seconds).
    pub long_reader: Option<(&'static str, u64)>,
}

pub const CURATED: &[Curated] = &[
    Curated {
        name: "lock-contention",
        pattern: "lock contention under traffic (a report query running at 2 AM)",
        up: "ALTER TABLE orders ADD COLUMN flagged boolean NOT NULL DEFAULT false;\n",
        down: Some("ALTER TABLE orders DROP COLUMN flagged;\n"),
        checks: None,
        long_reader: Some(("orders", 4)),
    },
    Curated {
        name: "not-null",
        pattern: "NOT NULL over old rows with NULLs",
        up: "ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;\n",
        down: Some("ALTER TABLE accounts ALTER COLUMN plan DROP NOT NULL;\n"),
        checks: None,
        long_reader: None,
    },
    Curated {
        name: "blocking-index",
        pattern: "index creation without CONCURRENTLY on a hot table",
        up: "CREATE INDEX orders_note_created_idx ON orders (note, created_at, total_cents);\n",
        down: Some("DROP INDEX orders_note_created_idx;\n"),
        checks: None,
        long_reader: None,
    },
    Curated {
        name: "fk-orphans",
        pattern: "foreign key over orphaned rows (data drift from an old bug)",
        up: "ALTER TABLE accounts ADD CONSTRAINT accounts_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);\n",
        down: Some("ALTER TABLE accounts DROP CONSTRAINT accounts_org_fk;\n"),
        checks: None,
        long_reader: None,
    },
    Curated {
        name: "lowercase-emails",
        pattern: "a transformation wrong on edge cases (mixed-case duplicates, NULLs)",
        up: "UPDATE users SET email = lower(email);\nALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);\n",
        down: Some("ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_key;\n"),
        checks: Some("-- check: distinct e-mails\nSELECT count(DISTINCT email) FROM users;\n"),
        long_reader: None,
    },
    Curated {
        name: "safe",
        pattern: "a safe migration (nullable column, concurrent index)",
        up: "ALTER TABLE orders ADD COLUMN priority integer;\nCREATE INDEX CONCURRENTLY orders_priority_idx ON orders (priority);\n",
        down: Some("DROP INDEX CONCURRENTLY orders_priority_idx;\nALTER TABLE orders DROP COLUMN priority;\n"),
        checks: None,
        long_reader: None,
    },
    Curated {
        name: "lossy-rollback",
        pattern: "a rollback that loses data",
        up: "ALTER TABLE accounts DROP COLUMN plan_note;\n",
        down: Some("ALTER TABLE accounts ADD COLUMN plan_note text;\n"),
        checks: None,
        long_reader: None,
    },
];
