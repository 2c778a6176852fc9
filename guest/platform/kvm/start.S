/* start.S — the KVM image's entry and its one exit instruction. */
#define AIRLOCK_PORT 0x3A1 /* abi.h */

    .text
    .globl _start
    .type _start, @function
/* The host starts us in ring 3 with RSP = stack_top (2 MiB aligned), so the stack is
 * 16-byte aligned before this call, as the SysV ABI wants at a call site. */
_start:
    xor %ebp, %ebp
    call airlock_kvm_main
1:  jmp 1b
    .size _start, . - _start

/* void kvm_out(uint32_t exit_kind): one `out` to AIRLOCK_PORT; the host answers by
 * resuming after it. A real call, so no XMM value is live here (all XMM registers are
 * caller-saved) and the host may restore registers from a snapshot taken at this point. */
    .globl kvm_out
    .type kvm_out, @function
kvm_out:
    mov %edi, %eax
    mov $AIRLOCK_PORT, %dx
    out %eax, %dx
    ret
    .size kvm_out, . - kvm_out

    .section .note.GNU-stack, "", @progbits
