ALTER TABLE orders DROP COLUMN total_cents;
