-- A ledger written by zbatch at commit 79f8682 (before the owed columns of ADDED_COLUMNS; no PRAGMA user_version),
-- through its Ledger API by make_fixture.py.
BEGIN TRANSACTION;
CREATE TABLE jobs (
    key TEXT PRIMARY KEY,
    recipe_id TEXT NOT NULL,
    pointer INTEGER NOT NULL,
    profile TEXT NOT NULL,
    profile_source TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    job_name TEXT NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    workdir TEXT NOT NULL,
    tag TEXT NOT NULL,
    message_path TEXT NOT NULL,
    claimed_by TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL,
    updated_at REAL NOT NULL
);
INSERT INTO "jobs" VALUES('claimed','recipe-claimed',1,'cluster-a','/etc/zbatch/profiles/cluster-a.yaml','slurm','zbatch-claimed',NULL,'submitting',NULL,'','/dls/tmp/claimed','tag-claimed','/dls/tmp/claimed/zbatch-tag-claimed.recipewrap.json','ws001:4242:139872:uncertain',0,0,NULL,1700000001.0);
INSERT INTO "jobs" VALUES('pending','recipe-pending',2,'cluster-a','/etc/zbatch/profiles/cluster-a.yaml','slurm','zbatch-pending','1001','pending',NULL,'','/dls/tmp/pending','tag-pending','/dls/tmp/pending/zbatch-tag-pending.recipewrap.json','ws001:4242',1,0,1700000003.0,1700000005.0);
INSERT INTO "jobs" VALUES('running','recipe-running',3,'cluster-b','/etc/zbatch/profiles/cluster-a.yaml','sge','naïve ''job''; "x"','1002.4','running',NULL,'r: ✓','/dls/tmp/running','tag-running','/dls/tmp/running/zbatch-tag-running.recipewrap.json','ws001:4242',1,1,1700000007.0,1700000008.0);
INSERT INTO "jobs" VALUES('succeeded','recipe-succeeded',4,'cluster-a','/etc/zbatch/profiles/cluster-a.yaml','slurm','zbatch-succeeded','1003','succeeded',0,'','/dls/tmp/succeeded','tag-succeeded','/dls/tmp/succeeded/zbatch-tag-succeeded.recipewrap.json','ws001:4242',1,0,1700000010.0,1700000015.0);
INSERT INTO "jobs" VALUES('failed','recipe-failed',5,'cluster-a','/etc/zbatch/profiles/cluster-a.yaml','drmaa','zbatch-failed','1004','failed',3,'NonZeroExitCode','/dls/tmp/failed','tag-failed','/dls/tmp/failed/zbatch-tag-failed.recipewrap.json','ws001:4242',2,0,1700000013.0,1700000016.0);
CREATE INDEX jobs_active ON jobs (state, profile);
CREATE INDEX jobs_job_id ON jobs (job_id);
COMMIT;
