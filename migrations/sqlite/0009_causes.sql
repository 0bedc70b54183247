-- Why an enrollment is held, paused or stopped, as a kind that code matches on
-- (`cause`, the names of `model::CauseKind`) and the detail it carries (`cause_detail`:
-- a field's name, a Message-ID, the server's reply). `reason` keeps the sentence a
-- person reads, so that an older binary still shows it. Rows written before this
-- migration are mapped from that sentence once, here; nothing reads the sentence as
-- state afterwards.
ALTER TABLE enrollments ADD COLUMN cause TEXT;
ALTER TABLE enrollments ADD COLUMN cause_detail TEXT;

UPDATE enrollments SET
    cause = CASE
        WHEN reason LIKE 'missing field ''%' THEN 'missing_field'
        WHEN reason LIKE 'in doubt: % may have been sent' THEN 'in_doubt'
        WHEN reason LIKE 'retrying: %' THEN 'retrying'
        WHEN reason LIKE 'smtp: %' THEN 'rejected'
        WHEN reason LIKE 'gave up after %' THEN 'gave_up'
        WHEN reason LIKE 'out of office until %' THEN 'out_of_office'
        WHEN reason LIKE 'no send time%' THEN 'no_send_time'
        WHEN reason LIKE 'sequence ''%'' is no longer in sequences/' THEN 'sequence_gone'
        WHEN reason LIKE 'step ''%'' is no longer in sequence %' THEN 'step_gone'
        WHEN reason = 'paused by operator' THEN 'operator'
        WHEN reason IN ('replied', 'declined', 'unsubscribed', 'bounced', 'complained',
                        'suppressed', 'manual', 'unenrolled') THEN reason
        ELSE 'other'
    END,
    cause_detail = CASE
        WHEN reason LIKE 'missing field ''%' THEN substr(reason, 15)
        WHEN reason LIKE 'in doubt: % may have been sent' THEN substr(reason, 11, length(reason) - 29)
        WHEN reason LIKE 'retrying: %' THEN substr(reason, 11)
        WHEN reason LIKE 'smtp: %' THEN substr(reason, 7)
        WHEN reason LIKE 'gave up after %' THEN substr(reason, 15)
        WHEN reason LIKE 'out of office until %' THEN substr(reason, 21)
        WHEN reason LIKE 'sequence ''%'' is no longer in sequences/' THEN substr(reason, 11, instr(substr(reason, 11), '''') - 1)
        WHEN reason LIKE 'step ''%'' is no longer in sequence %' THEN substr(reason, 7, instr(substr(reason, 7), '''') - 1)
        WHEN reason LIKE 'no send time%' OR reason = 'paused by operator'
             OR reason IN ('replied', 'declined', 'unsubscribed', 'bounced', 'complained',
                           'suppressed', 'manual', 'unenrolled') THEN NULL
        ELSE reason
    END
WHERE reason IS NOT NULL;
