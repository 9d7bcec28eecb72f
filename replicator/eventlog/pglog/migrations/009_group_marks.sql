-- Group boundaries move into the change log: the last change of each
-- appended (source transaction, stream) is marked, and subscribers read
-- whole groups up to a mark. rejot_log.groups is no longer written (a row
-- per source transaction cost as much as its changes); what it holds is
-- kept for the streams that still need it (see Filled) and pruned as
-- before. Replays are told by rejot_log.appended.
ALTER TABLE rejot_log.changes ADD COLUMN last boolean NOT NULL DEFAULT false;
UPDATE rejot_log.changes c SET last = true
  FROM rejot_log.groups g WHERE g.stream = c.stream AND g.last_position = c.position;

-- The groups the change log holds, for tools and tests: each source
-- transaction's run of changes in a stream. (A first state nobody read
-- keeps no changes, so it has no group here.)
CREATE VIEW rejot_log.change_groups AS
SELECT stream, min(position) AS first_position, max(position) AS last_position,
       min(commit_lsn) AS commit_lsn, max(commit_lsn) AS last_commit_lsn, max(commit_time) AS commit_time,
       bool_or(last) AS whole
  FROM (SELECT c.*, count(*) FILTER (WHERE c.last) OVER (PARTITION BY c.stream ORDER BY c.position
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS grp
          FROM rejot_log.changes c) AS x
 GROUP BY stream, grp;
