-- When a certificate's "expiring soon" notice (webhook event
-- certificate.expiring_soon) was recorded; NULL: not yet. Set in the same
-- transaction as the notice's audit record, so each certificate gets one.
ALTER TABLE certificates ADD COLUMN expiry_noticed_at BIGINT;
