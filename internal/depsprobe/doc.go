// Package depsprobe keeps the module's chosen dependency versions in go.mod
// while the packages that use them are being written, so that parallel work
// does not re-resolve them. It is deleted once every dependency has a real user.
package depsprobe
