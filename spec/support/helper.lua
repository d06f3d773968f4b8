-- Loaded by busted before the specs (see .busted): makes spec/support/
-- requirable as `support.<name>` and exposes the binary under test.
package.path = "spec/?.lua;" .. package.path
